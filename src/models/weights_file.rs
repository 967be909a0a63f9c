//! A safetensors weights file read through a memory map whose pages are
//! handed back to the kernel as soon as each tensor has been copied out.
//!
//! candle's own mmapped reader keeps every page it touched resident until
//! the file is closed, so while a model loads, its process holds the
//! checkpoint twice (the mapped file and the tensors read from it) and,
//! for the CPU kernels, a layer's packed copy on top. Handing the pages
//! back keeps the file in the page cache (a second read is still cheap)
//! but out of the process's resident memory: a load's peak is the
//! tensors themselves plus one layer in flight.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::safetensors::Load;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use memmap2::{Mmap, UncheckedAdvice};
use safetensors::tensor::TensorInfo;
use safetensors::SafeTensors;

/// One mapped safetensors file and the index of its header.
pub struct WeightsFile {
    path: PathBuf,
    map: Mmap,
    /// Where the tensors' bytes start (after the 8-byte length and the header).
    data_start: usize,
    tensors: HashMap<String, TensorInfo>,
}

impl WeightsFile {
    /// Map `path` and read its header.
    ///
    /// # Safety
    /// As for any memory map: the file must not be truncated or written
    /// while it is mapped (the tool never writes a weights file it reads).
    pub unsafe fn open(path: &Path) -> candle_core::Result<WeightsFile> {
        let file = File::open(path).map_err(|e| candle_core::Error::from(e).with_path(path))?;
        // SAFETY: the caller's promise; the map is only read.
        let map =
            unsafe { Mmap::map(&file) }.map_err(|e| candle_core::Error::from(e).with_path(path))?;
        let (header, metadata) = SafeTensors::read_metadata(&map)
            .map_err(|e| candle_core::Error::from(e).with_path(path))?;
        let tensors = metadata
            .tensors()
            .into_iter()
            .map(|(name, info)| (name, info.clone()))
            .collect();
        Ok(WeightsFile {
            path: path.to_path_buf(),
            map,
            data_start: 8 + header,
            tensors,
        })
    }

    /// Tensor `name` copied out of the map, its pages then handed back.
    fn load(&self, name: &str, device: &Device) -> candle_core::Result<Tensor> {
        let info = self.tensors.get(name).ok_or_else(|| {
            candle_core::Error::CannotFindTensor {
                path: name.to_string(),
            }
            .bt()
        })?;
        let (start, end) = (
            self.data_start + info.data_offsets.0,
            self.data_start + info.data_offsets.1,
        );
        // (The header was validated against the file's length when it was
        // read; a range outside the map is still an error, not a panic.)
        let bytes = self.map.get(start..end).ok_or_else(|| {
            candle_core::Error::msg(format!("{name}: bytes {start}..{end} lie outside the file"))
                .with_path(&self.path)
        })?;
        let view = safetensors::tensor::TensorView::new(info.dtype, info.shape.clone(), bytes)
            .map_err(|e| candle_core::Error::from(e).with_path(&self.path))?;
        let tensor = view.load(device)?;
        self.release(start..end);
        Ok(tensor)
    }

    /// Hand back the whole pages inside `bytes` (a page shared with a
    /// neighbouring tensor stays until that one is read too).
    fn release(&self, bytes: std::ops::Range<usize>) {
        let page = page_size();
        let (from, to) = (bytes.start.next_multiple_of(page), bytes.end / page * page);
        if to > from {
            // SAFETY: the map is private and read-only, so the kernel drops
            // clean copies of file pages: a later read of this range faults
            // the same bytes back in from the file. No reference into the
            // range outlives `load` (the tensor holds its own copy).
            // Advice is a hint; if it fails, the pages simply stay.
            let _ = unsafe {
                self.map
                    .unchecked_advise_range(UncheckedAdvice::DontNeed, from, to - from)
            };
        }
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size)
        .ok()
        .filter(|&s| s > 0)
        .unwrap_or(4096)
}

impl SimpleBackend for WeightsFile {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let tensor = self.load(name, device)?.to_dtype(dtype)?;
        if tensor.shape() != &shape {
            Err(candle_core::Error::UnexpectedShape {
                msg: format!("shape mismatch for {name}"),
                expected: shape,
                got: tensor.shape().clone(),
            }
            .bt())?
        }
        Ok(tensor)
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        self.load(name, device)?.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The resident kilobytes of this process's mappings of `path`
    /// (`/proc/self/smaps`).
    fn resident_kb(path: &Path) -> usize {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let name = path.to_str().unwrap();
        let mut ours = false;
        let mut kb = 0;
        for line in smaps.lines() {
            if let Some(rss) = line.strip_prefix("Rss:") {
                if ours {
                    kb += rss
                        .trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<usize>()
                        .unwrap();
                }
            } else if line.split_whitespace().count() >= 5 && !line.ends_with(" kB") {
                // A mapping's header line: address range, perms, offset, dev, inode [, path].
                ours = line.ends_with(name);
            }
        }
        kb
    }

    #[test]
    fn read_pages_leave_the_process() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.safetensors");
        let dev = Device::Cpu;
        // 4 MB of weights: what stays mapped after reading must be far less.
        let w = Tensor::ones((1000, 1000), DType::F32, &dev).unwrap();
        candle_core::safetensors::save(&HashMap::from([("w".to_string(), w)]), &path).unwrap();
        // SAFETY: the test's own file, not written while mapped.
        let file = unsafe { WeightsFile::open(&path) }.unwrap();
        let read = file.get_unchecked("w", DType::F32, &dev).unwrap();
        assert_eq!(read.sum_all().unwrap().to_scalar::<f32>().unwrap(), 1e6);
        let kb = resident_kb(&path);
        assert!(kb < 64, "{kb} kB of the 4000 kB file still resident");
    }

    #[test]
    fn tensors_read_as_candle_reads_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let dev = Device::Cpu;
        // One tensor spanning several pages, small ones around it, two dtypes.
        let big: Vec<f32> = (0..50_000).map(|i| (i as f32).sin()).collect();
        let tensors = HashMap::from([
            (
                "a.weight".to_string(),
                Tensor::from_vec(big, (250, 200), &dev).unwrap(),
            ),
            (
                "a.bias".to_string(),
                Tensor::arange(0f32, 7.0, &dev).unwrap(),
            ),
            (
                "b.half".to_string(),
                Tensor::new(&[1.5f32, -2.25, 3.0], &dev)
                    .unwrap()
                    .to_dtype(DType::F16)
                    .unwrap(),
            ),
        ]);
        candle_core::safetensors::save(&tensors, &path).unwrap();
        let reference = candle_core::safetensors::load(&path, &dev).unwrap();
        // SAFETY: the test's own file, not written while mapped.
        let file = unsafe { WeightsFile::open(&path) }.unwrap();
        for round in 0..2 {
            for (name, want) in &reference {
                let got = file.get_unchecked(name, DType::F32, &dev).unwrap();
                let want = want.to_dtype(DType::F32).unwrap();
                assert_eq!(got.shape(), want.shape(), "{name}");
                let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap();
                assert_eq!(
                    diff.to_scalar::<f32>().unwrap(),
                    0.0,
                    "{name}, read {round}"
                );
            }
        }
        assert!(file.contains_tensor("a.bias") && !file.contains_tensor("a"));
        let err = file.get_unchecked("missing", DType::F32, &dev).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
        let err = file
            .get(
                (7, 1).into(),
                "a.bias",
                candle_nn::Init::Const(0.),
                DType::F32,
                &dev,
            )
            .unwrap_err();
        assert!(
            err.to_string().contains("shape mismatch for a.bias"),
            "{err}"
        );
    }

    #[test]
    fn a_damaged_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cut.safetensors");
        std::fs::write(&path, b"\x40\x00\x00\x00\x00\x00\x00\x00{\"a\":").unwrap();
        // SAFETY: the test's own file.
        let err = unsafe { WeightsFile::open(&path) }.err().unwrap();
        assert!(err.to_string().contains("cut.safetensors"), "{err}");
    }
}
