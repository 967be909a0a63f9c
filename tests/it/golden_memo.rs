//! MEMO's adaptation step against PyTorch: the marginal-entropy loss, its
//! gradient, the weights after one SGD step and the adapted logits, for
//! resnet18 with synthetic weights. Expectations written by
//! `scripts/golden_memo.py` (MEMO's BatchNorm patch on torchvision).

use candle_core::{DType, Device, Tensor};
use imagenet_hard::labels::ClassSubset;
use imagenet_hard::models::adapt::{marginal_entropy, AdaptResNet, MemoStep, Norm};
use imagenet_hard::models::synthetic::{input, write_weights, Head};
use imagenet_hard::models::Architecture;
use serde_json::Value;

use crate::golden::golden;

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// |a - b| <= tol * max(1, |b|), elementwise.
fn close(what: &str, ours: &[f64], want: &[f64], tol: f64) {
    assert_eq!(ours.len(), want.len(), "{what}: lengths");
    for (i, (a, b)) in ours.iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() <= tol * b.abs().max(1.0),
            "{what}[{i}]: ours {a}, PyTorch {b}"
        );
    }
}

fn to_f64(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn one_memo_step_matches_pytorch() {
    let doc: Value = serde_json::from_str(
        &std::fs::read_to_string(golden("memo/resnet18.json")).expect("golden file"),
    )
    .unwrap();
    let (views, size) = (
        doc["views"].as_u64().unwrap() as usize,
        doc["size"].as_u64().unwrap() as usize,
    );
    let lr = doc["lr"].as_f64().unwrap();
    let step = MemoStep {
        prior_strength: doc["prior_strength"].as_f64().unwrap(),
        lr,
    };
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("resnet18.safetensors");
    let arch = Architecture::find("resnet18").unwrap();
    write_weights(
        arch,
        doc["weight_seed"].as_u64().unwrap(),
        Head::Random,
        &weights,
    )
    .unwrap();
    let net = AdaptResNet::load("resnet18", &weights, &Device::Cpu, DType::F32).unwrap();
    let plane = 3 * size * size;
    let x_views = input(doc["view_seed"].as_u64().unwrap(), views * plane);
    let x_test = input(doc["test_seed"].as_u64().unwrap(), plane);
    let classes: Vec<u32> = ClassSubset::ImagenetA
        .indices()
        .into_iter()
        .map(|i| i as u32)
        .collect();

    // The pretrained model under mixed BatchNorm.
    let test = Tensor::from_slice(&x_test, (1, 3, size, size), &Device::Cpu).unwrap();
    let before = net
        .forward(&test, &mut Norm::mixed(step.prior_strength))
        .unwrap();
    close(
        "logits before",
        &to_f64(&before),
        &floats(&doc["logits_before"]),
        1e-4,
    );

    // Loss and gradient by hand, with the same calls the episode makes.
    let x = Tensor::from_slice(&x_views, (views, 3, size, size), &Device::Cpu).unwrap();
    let logits = net
        .forward(&x, &mut Norm::mixed(step.prior_strength))
        .unwrap()
        .index_select(&Tensor::new(classes.as_slice(), &Device::Cpu).unwrap(), 1)
        .unwrap();
    let loss = marginal_entropy(&logits).unwrap();
    let loss_value = loss.to_scalar::<f32>().unwrap() as f64;
    close(
        "loss",
        &[loss_value],
        &[doc["loss"].as_f64().unwrap()],
        1e-5,
    );
    let grads = loss.backward().unwrap();
    let mut before_step = Vec::new();
    for (name, want) in doc["grads"].as_object().unwrap() {
        let var = net.var(name).unwrap_or_else(|| panic!("no tensor {name}"));
        let g = to_f64(
            grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("no gradient for {name}")),
        );
        let first = floats(&want["first"]);
        // Gradients are around 1e-3; compare against the tensor's scale.
        let scale = want["abs_sum"].as_f64().unwrap() / g.len() as f64;
        for (i, (a, b)) in g.iter().zip(&first).enumerate() {
            assert!(
                (a - b).abs() <= 2e-3 * scale.max(b.abs()) + 1e-9,
                "grad {name}[{i}]: ours {a}, PyTorch {b}"
            );
        }
        let sum: f64 = g.iter().sum();
        let abs_sum: f64 = g.iter().map(|v| v.abs()).sum();
        let (want_sum, want_abs) = (
            want["sum"].as_f64().unwrap(),
            want["abs_sum"].as_f64().unwrap(),
        );
        assert!(
            (abs_sum - want_abs).abs() <= 1e-3 * want_abs,
            "{name}: |grad| sum {abs_sum} vs {want_abs}"
        );
        assert!(
            (sum - want_sum).abs() <= 1e-3 * want_abs,
            "{name}: grad sum {sum} vs {want_sum}"
        );
        before_step.push((name.clone(), to_f64(var.as_tensor()), first));
    }
    // Only ImageNet-A's classes get a gradient in the classifier.
    let fc_grad = to_f64(
        grads
            .get(net.var("fc.weight").unwrap().as_tensor())
            .unwrap(),
    );
    let in_subset = ClassSubset::ImagenetA.mask();
    for (class, row) in fc_grad.chunks(512).enumerate() {
        if !in_subset[class] {
            assert!(
                row.iter().all(|&v| v == 0.0),
                "class {class} outside the subset moved"
            );
        }
    }

    // The episode: restore, step, predict. The weights move by -lr * grad.
    let episode = net
        .memo_episode(&x_views, &x_test, size, Some(&classes), step)
        .unwrap();
    close(
        "episode loss",
        &[episode.loss as f64],
        &[doc["loss"].as_f64().unwrap()],
        1e-5,
    );
    for (name, old, grad) in &before_step {
        let new = to_f64(net.var(name).unwrap().as_tensor());
        for i in 0..grad.len() {
            let moved = new[i] - old[i];
            let want = -lr * grad[i];
            assert!(
                (moved - want).abs() <= 2e-3 * want.abs().max(1e-4 * lr) + 1e-7,
                "{name}[{i}] moved by {moved}, expected {want}"
            );
        }
    }
    let after: Vec<f64> = episode.logits.iter().map(|&v| v as f64).collect();
    close(
        "logits after the step",
        &after,
        &floats(&doc["logits_after"]),
        1e-4,
    );
    // The step did change the prediction's logits.
    let shift = after
        .iter()
        .zip(floats(&doc["logits_before"]))
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(shift > 1e-2, "the adapted logits barely moved ({shift})");

    // Restoring brings back the pretrained logits exactly.
    net.restore().unwrap();
    let again = net
        .forward(&test, &mut Norm::mixed(step.prior_strength))
        .unwrap();
    assert_eq!(to_f64(&again), to_f64(&before));
}
