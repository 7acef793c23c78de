//! `kiln plan`'s predictor on the tiny BERT fixture (h 32, 2 layers, 4 heads, feed-forward 64):
//! FLOPs against the hand-counted matrix products, and memory that follows what trains.

use std::path::PathBuf;

use kiln_models::{DeviceChoice, HeadConfig, Pretrained, Readout, SequenceClassifier};
use kiln_train::plan::{Plan, StepShape, plan};
use kiln_tuning::MethodConfig;

fn predict(method: &str, batch: usize, seq: usize) -> Plan {
    let device = DeviceChoice::Cpu.device().expect("CPU backend");
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/bert-tiny");
    let pretrained = Pretrained::random(&dir, &device).expect("fixture");
    let method = MethodConfig::parse(method, &[]).expect("method");
    let head = HeadConfig {
        layers: method.method().head_layers(),
        outputs: 2,
        dropout: 0.1,
    };
    let model =
        SequenceClassifier::new(pretrained.backbone, Readout::Mean, head, &device).expect("model");
    let (model, report) = method.apply(model).expect("applies");
    let shape = StepShape {
        batch,
        seq,
        virtual_tokens: method.method().virtual_tokens(),
    };
    plan(&model, &report, shape).expect("plans")
}

#[test]
fn forward_flops_are_the_hand_counted_matrix_products() {
    let (b, t, h, f, layers) = (4.0, 16.0, 32.0, 64.0, 2.0);
    let tokens = b * t;
    // Per layer: four h x h projections, two feed-forward products, q·kᵀ and probs·v.
    let per_layer = 2.0 * tokens * (4.0 * h * h + 2.0 * h * f) + 4.0 * b * t * t * h;
    let head = 2.0 * b * h * 2.0;
    let full = predict("full", 4, 16);
    assert!((full.forward_flops - (layers * per_layer + head)).abs() < 1.0);
    // Full fine-tuning: input and weight gradients everywhere, twice the forward.
    assert!((full.backward_flops - 2.0 * full.forward_flops).abs() < 1.0);
    assert_eq!(full.layers_in_backward, 2);
}

#[test]
fn memory_follows_what_trains() {
    let full = predict("full", 4, 16);
    let lora = predict("lora", 4, 16);
    let probe = predict("linear-probe", 4, 16);
    let partial = predict("partial-k", 4, 16);
    assert_eq!(full.gradient_bytes, 4.0 * full.params as f64);
    assert_eq!(full.optimizer_bytes, 8.0 * full.params as f64);
    assert_eq!(probe.trainable, 32 * 2 + 2);
    // A frozen backbone keeps no activations and its backward pass stops at the head.
    assert_eq!(probe.layers_in_backward, 0);
    assert!(probe.activation_bytes < 0.01 * full.activation_bytes);
    // LoRA's frozen weights keep no inputs for weight gradients, but its backward pass still
    // runs through every layer.
    assert!(lora.activation_bytes < full.activation_bytes);
    assert!(lora.activation_bytes > 0.5 * full.activation_bytes);
    assert_eq!(lora.layers_in_backward, 2);
    // The fixture has two layers, so partial-2 trains them all but the embeddings.
    assert!(partial.activation_bytes <= full.activation_bytes);
    // Twice the batch, about twice the activations.
    let double = predict("full", 8, 16);
    let ratio = double.activation_bytes / full.activation_bytes;
    assert!((1.9..2.1).contains(&ratio), "{ratio}");
    // Virtual tokens lengthen every sequence.
    let prompt = predict("prompt", 4, 16);
    assert_eq!(prompt.shape.virtual_tokens, 20);
    assert!(prompt.forward_flops > full.forward_flops);
}
