//! `kiln fpt`: the Frozen Pretrained Transformer on a non-language task (see
//! [`kiln_train::fpt`], which holds the arguments as [`FptSettings`]).

use anyhow::Result;

use kiln_models::DeviceChoice;
pub use kiln_train::fpt::FptSettings;

pub fn fpt(args: FptSettings, choice: DeviceChoice) -> Result<()> {
    kiln_train::fpt::train_fpt(&args, choice)?;
    Ok(())
}
