//! kiln-train's tests of what models compute, one binary: the peft and AdapterHub formats (the
//! LoRA family and IA3 among them), LoRA arithmetic, ICL, plans, and several tasks' adapters in
//! one pass. None of them seeds or
//! trains; those tests are in the `training` binary, kept apart so that this binary's random
//! initialisations cannot land inside a seeded run. (Every test binary links Burn: fewer binaries
//! keep the build's link time and disk use down.)

mod adapterhub;
mod causal_lm;
mod common;
mod generate;
mod icl;
mod lora_arithmetic;
mod lora_family;
mod multitask;
mod peft;
mod plan;
