#![no_main]
// Arbitrary bytes through imagenet_hard::fuzzing::manifest: must never panic.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    imagenet_hard::fuzzing::manifest(data);
});
