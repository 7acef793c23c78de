//! kiln-train: runs and the training loop. [`run`] is the library entry point (fine-tune,
//! reload, evaluate, predict, export, merge, plan). Around the loop ([`trainer`]): optimizer and
//! schedule ([`schedule`]), gradient transforms between backward and step ([`transforms`],
//! [`child_tuning`]), task metrics ([`metrics`]), atomic checkpoints of the trained parameters
//! ([`checkpoint`]), adapters saved on their own ([`adapters`]), text classification and
//! regression as a task ([`text_task`]) of any model that says how to take a batch's loss
//! ([`task_model`]), HF peft and merged checkpoints ([`peft`], [`merge`]), several runs' adapters
//! answering in one pass ([`multitask`]), and the method-comparison report ([`report`]).

#![warn(missing_docs)]

pub mod adapterhub;
pub mod adapters;
pub mod causal_lm;
pub mod checkpoint;
pub mod child_tuning;
pub mod compare;
/// Errors of runs and training.
pub mod error;
pub mod fingerprint;
pub mod fpt;
pub mod generate;
pub mod head_files;
pub mod icl;
pub mod lora_arithmetic;
pub mod memory;
pub mod merge;
pub mod metrics;
pub mod multitask;
pub mod peft;
pub mod plan;
pub mod predict;
pub mod pretrain;
pub mod report;
pub mod run;
pub mod schedule;
pub mod study;
pub mod task_model;
pub mod text_task;
pub mod trainer;
pub mod transforms;

pub use adapters::{
    ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, SavedAdapter, copy_adapter, load_adapter,
    save_adapter,
};
pub use checkpoint::{
    ensure_fresh_output, load_params, load_params_as, save_params, save_params_as, save_params_hf,
    write_atomically,
};
pub use child_tuning::{
    ChildTuning, FisherSettings, PathTensors, encoder_layer_prefixes, estimate_fisher,
};
pub use error::{Context, Result, TrainError};
pub use metrics::Metrics;
pub use schedule::{Decay, learning_rate};
pub use task_model::{Task, TaskModel};
pub use text_task::{FeatureCache, TextTask, evaluate};
pub use trainer::{EpochRecord, TaskData, TrainConfig, TrainState, TrainSummary, Trainer};
