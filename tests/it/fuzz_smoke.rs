//! The `cargo fuzz` entry points (imagenet_hard::fuzzing) over deterministic
//! mutations of valid seeds, on the stable toolchain: a short fuzzing pass
//! in every CI run. A panicking input is written to the temp dir and named.

use std::panic::{catch_unwind, AssertUnwindSafe};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(v.len() + 1);
        match rng.below(6) {
            0 if !v.is_empty() => {
                let i = at.min(v.len() - 1);
                v[i] ^= 1 << rng.below(8);
            }
            1 => v.truncate(at),
            2 if !v.is_empty() => {
                let i = at.min(v.len() - 1);
                v[i] = [0x00, 0xFF, 0x7F, 0x80][rng.below(4)];
            }
            3 => {
                let n = rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                v.splice(at..at, bytes);
            }
            4 if at < v.len() => {
                let end = (at + rng.below(64)).min(v.len());
                let chunk = v[at..end].to_vec();
                v.splice(at..at, chunk);
            }
            _ => {
                let end = (at + rng.below(32)).min(v.len());
                v.drain(at..end);
            }
        }
    }
    v
}

fn smoke(name: &str, seeds: &[Vec<u8>], runs: usize, f: fn(&[u8])) {
    let mut rng = Rng(0x5EED ^ name.len() as u64);
    let mut panics = Vec::new();
    // The seeds themselves, then mutations of them.
    for i in 0..runs + seeds.len() {
        let input = if i < seeds.len() {
            seeds[i].clone()
        } else {
            mutate(&seeds[rng.below(seeds.len())], &mut rng)
        };
        if catch_unwind(AssertUnwindSafe(|| f(&input))).is_err() {
            let path = std::env::temp_dir().join(format!("imagenet-hard-fuzz-{name}-{i}.bin"));
            std::fs::write(&path, &input).unwrap();
            panics.push(path);
        }
    }
    assert!(
        panics.is_empty(),
        "{name}: inputs that panicked: {panics:?}"
    );
}

fn encode(img: image::DynamicImage, f: image::ImageFormat) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, f).unwrap();
    out.into_inner()
}

fn picture() -> image::DynamicImage {
    image::RgbImage::from_fn(24, 18, |x, y| {
        image::Rgb([(x * 9) as u8, (y * 13) as u8, 77])
    })
    .into()
}

#[test]
fn decode_and_zoom_survive_mutated_images() {
    let seeds = vec![
        encode(picture(), image::ImageFormat::Jpeg),
        encode(picture(), image::ImageFormat::Png),
        encode(picture().grayscale(), image::ImageFormat::Png),
        encode(picture(), image::ImageFormat::WebP),
    ];
    smoke(
        "decode",
        &seeds,
        1500,
        imagenet_hard::fuzzing::decode_and_zoom,
    );
}

#[test]
fn manifest_parser_survives_mutated_manifests() {
    let seeds = vec![
        imagenet_hard::demo::DEMO_MANIFEST.as_bytes().to_vec(),
        include_bytes!("../../manifests/imagenet-hard-mini.toml").to_vec(),
    ];
    smoke("manifest", &seeds, 1500, imagenet_hard::fuzzing::manifest);
}

#[test]
fn webdataset_reader_survives_mutated_shards() {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in [
        ("s0000000.jpg", encode(picture(), image::ImageFormat::Jpeg)),
        ("s0000000.cls", b"2".to_vec()),
        ("s0000001.png", encode(picture(), image::ImageFormat::Png)),
        ("s0000001.cls", b"n01440764".to_vec()),
        ("../x/2.jpg", b"junk".to_vec()),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        // Bypass the builder's path check for the `../` member.
        h.as_gnu_mut().unwrap().name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_cksum();
        b.append(&h, data.as_slice()).unwrap();
    }
    let seeds = vec![b.into_inner().unwrap()];
    smoke(
        "webdataset",
        &seeds,
        300,
        imagenet_hard::fuzzing::webdataset,
    );
}
