//! kiln-train: the training loop and what surrounds it. Optimizer and schedule
//! ([`schedule`]), gradient transforms between backward and step ([`transforms`]), task metrics
//! ([`metrics`]), atomic checkpoints of the trained parameters ([`checkpoint`]), adapters saved on their own
//! ([`adapters`]), and the loop with evaluation, early stopping, JSON-lines logs and resume
//! ([`trainer`]) over any model that says how to take a batch's loss ([`learner`]), and the
//! method-comparison report ([`report`]).

pub mod adapters;
pub mod checkpoint;
pub mod child_tuning;
pub mod error;
pub mod fpt;
pub mod icl;
pub mod learner;
pub mod memory;
pub mod merge;
pub mod metrics;
pub mod peft;
pub mod plan;
pub mod pretrain;
pub mod report;
pub mod run;
pub mod schedule;
pub mod trainer;
pub mod transforms;

pub use adapters::{
    ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, SavedAdapter, load_adapter, save_adapter,
};
pub use checkpoint::{
    load_params, load_params_as, save_params, save_params_as, save_params_hf, write_atomically,
};
pub use child_tuning::{ChildTuning, PathTensors, estimate_fisher};
pub use error::{Context, Result, TrainError};
pub use learner::{FeatureCache, Learner, TextTask};
pub use metrics::Metrics;
pub use schedule::{Decay, learning_rate};
pub use trainer::{
    EpochRecord, TaskData, TrainConfig, TrainState, TrainSummary, Trainer, evaluate,
};
