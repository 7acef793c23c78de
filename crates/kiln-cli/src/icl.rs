//! `kiln icl`: in-context learning with a GPT-2 directory, the zero-training baseline (see
//! [`kiln_train::icl`], which holds the arguments besides the task as [`IclSettings`]).

use anyhow::Result;
use clap::Args;

use kiln_models::DeviceChoice;
use kiln_train::icl::IclSettings;

use crate::train::TaskArgs;

#[derive(Args)]
pub struct IclArgs {
    #[command(flatten)]
    pub task: TaskArgs,
    #[command(flatten)]
    pub settings: IclSettings,
}

pub fn icl(args: IclArgs, choice: DeviceChoice) -> Result<()> {
    kiln_train::icl::run_icl(&args.task.spec(), &args.settings, choice)?;
    Ok(())
}
