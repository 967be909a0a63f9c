//! Entry points for fuzzing: each takes arbitrary bytes, drives one input
//! path of the tool, and must return (an error is fine) without panicking.
//! The `cargo fuzz` targets in `fuzz/` call them, and a stable-toolchain
//! test (`tests/it/fuzz_smoke.rs`) runs them over mutated seeds in CI.

use std::ops::ControlFlow;

use crate::labels::LabelConvention;
use crate::sources::{Container, Source, Wanted};
use crate::zoom::{decode_for_zoom, zoom_views, DecodeLimits, ZoomGrid};

/// Decode untrusted image bytes and cut zoom views from them.
pub fn decode_and_zoom(data: &[u8]) {
    let limits = DecodeLimits {
        // Keep a fuzzing run's memory small; the defaults allow far more.
        max_side: 4096,
        max_pixels: 4096 * 1024,
        max_bytes: 1 << 20,
        max_zoom_bytes: 64 << 20,
    };
    let grid = ZoomGrid {
        scales: vec![8, 33, 64],
        anchors: 3,
        crop_size: 16,
        fill: 0,
    };
    if let Ok(img) = decode_for_zoom(data, limits, &grid) {
        let views = zoom_views(&img, &grid);
        assert_eq!(views.len(), grid.len());
    }
}

/// Parse and validate a manifest.
pub fn manifest(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let path = std::path::Path::new("fuzz.toml");
        if let Ok(m) = crate::manifest::Manifest::parse(text, path) {
            let _ = m.validate(path);
        }
    }
}

/// Read bytes as a WebDataset shard (and as a class-folder archive),
/// resolving every label convention.
pub fn webdataset(data: &[u8]) {
    let Ok(dir) = tempfile_dir() else { return };
    let file = dir.join("shard.tar");
    if std::fs::write(&file, data).is_err() {
        return;
    }
    for (container, labels) in [
        (
            Container::Webdataset {
                files: vec![file.clone()],
            },
            LabelConvention::ObjectnetIndex,
        ),
        (
            Container::Webdataset {
                files: vec![file.clone()],
            },
            LabelConvention::Wnid,
        ),
        (
            Container::Archive {
                files: vec![file.clone()],
            },
            LabelConvention::Imagenet1kIndex,
        ),
    ] {
        let source = Source {
            container,
            labels,
            limit: None,
        };
        let _ = source.total_rows();
        let _ = source.visit(&Wanted::All, &mut |_| ControlFlow::Continue(()));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir() -> std::io::Result<std::path::PathBuf> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "imagenet-hard-fuzz-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
