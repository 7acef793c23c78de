//! `kiln pretrain`: causal-LM training of a GPT-2 configuration from scratch on plain text (see
//! [`kiln_train::pretrain`], which holds the arguments as [`PretrainSettings`]).

use anyhow::Result;

use kiln_models::DeviceChoice;
pub use kiln_train::pretrain::PretrainSettings;

pub fn pretrain(args: PretrainSettings, choice: DeviceChoice) -> Result<()> {
    kiln_train::pretrain::pretrain(&args, choice)?;
    Ok(())
}
