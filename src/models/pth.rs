//! PyTorch zip checkpoints (`torch.save`, the `.pth` files torchvision
//! publishes) read without running any pickle code: before candle loads
//! the tensors, every global the pickle names is checked against the few
//! that only rebuild tensors (what `torch.load(weights_only=True)` allows).
//! Anything else is refused.

use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum PthError {
    #[error("{file}: not a PyTorch zip checkpoint ({message}); convert it to safetensors or re-save it with torch.save")]
    NotZip { file: PathBuf, message: String },
    #[error(
        "{file}: its pickle refers to `{global}`, which is not a tensor-rebuilding global; \
         refusing to load it (a checkpoint can run code through such globals). \
         If you trust the file, convert it to safetensors with PyTorch first"
    )]
    UnsafeGlobal { file: PathBuf, global: String },
    #[error("{file}: malformed pickle at byte {offset}: {message}")]
    Malformed {
        file: PathBuf,
        offset: usize,
        message: String,
    },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Globals a weights-only checkpoint may name.
const ALLOWED: &[&str] = &[
    "collections.OrderedDict",
    "torch._utils._rebuild_tensor",
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_tensor_v3",
    "torch._utils._rebuild_parameter",
    "torch._utils._rebuild_parameter_with_state",
    "torch.Size",
    "torch.FloatStorage",
    "torch.DoubleStorage",
    "torch.HalfStorage",
    "torch.BFloat16Storage",
    "torch.LongStorage",
    "torch.IntStorage",
    "torch.ShortStorage",
    "torch.CharStorage",
    "torch.ByteStorage",
    "torch.BoolStorage",
    "torch.storage.UntypedStorage",
    "torch.float32",
    "torch.float16",
    "torch.bfloat16",
    "torch.float64",
    "torch.int64",
];

/// Check every pickle in the checkpoint; `Ok` when all globals are allowed.
pub fn check_tensor_only(file: &Path) -> Result<(), PthError> {
    let not_zip = |m: String| PthError::NotZip {
        file: file.into(),
        message: m,
    };
    let f = std::fs::File::open(file).map_err(|e| not_zip(e.to_string()))?;
    let mut archive = zip::ZipArchive::new(f).map_err(|e| not_zip(e.to_string()))?;
    let names: Vec<String> = archive
        .file_names()
        .filter_map(|n| n.ok())
        .filter(|n| n.ends_with(".pkl"))
        .map(|n| n.into_owned())
        .collect();
    if names.is_empty() {
        return Err(not_zip("no .pkl entry".into()));
    }
    for name in names {
        let mut bytes = Vec::new();
        archive
            .by_name(&name)
            .and_then(|mut e| e.read_to_end(&mut bytes).map_err(Into::into))
            .map_err(|e| not_zip(e.to_string()))?;
        for global in pickle_globals(&bytes).map_err(|(offset, message)| PthError::Malformed {
            file: file.into(),
            offset,
            message,
        })? {
            if !ALLOWED.contains(&global.as_str()) {
                return Err(PthError::UnsafeGlobal {
                    file: file.into(),
                    global,
                });
            }
        }
    }
    Ok(())
}

/// Every `module.name` a pickle stream imports (GLOBAL, STACK_GLOBAL), found
/// by walking its opcodes without executing them. Opcodes that import in
/// other ways (INST, extension registry) are reported as such.
pub fn pickle_globals(data: &[u8]) -> Result<Vec<String>, (usize, String)> {
    let mut globals = Vec::new();
    // Strings pushed so far (for STACK_GLOBAL) and memoised strings.
    let mut strings: Vec<String> = Vec::new();
    let mut memo: std::collections::HashMap<u64, String> = std::collections::HashMap::new();
    let mut memo_next = 0u64;
    let mut last_string: Option<String> = None;
    let mut pos = 0usize;
    let take = |pos: &mut usize, n: usize| -> Result<&[u8], (usize, String)> {
        let end = pos
            .checked_add(n)
            .filter(|&e| e <= data.len())
            .ok_or((*pos, "unexpected end".to_string()))?;
        let s = &data[*pos..end];
        *pos = end;
        Ok(s)
    };
    let uint = |b: &[u8]| b.iter().rev().fold(0u64, |acc, &x| (acc << 8) | x as u64);
    let line = |pos: &mut usize| -> Result<String, (usize, String)> {
        let start = *pos;
        let nl = data[start..]
            .iter()
            .position(|&b| b == b'\n')
            .ok_or((start, "unterminated line".to_string()))?;
        *pos = start + nl + 1;
        Ok(String::from_utf8_lossy(&data[start..start + nl]).into_owned())
    };
    while pos < data.len() {
        let at = pos;
        let op = data[pos];
        pos += 1;
        let mut pushed: Option<String> = None;
        match op {
            b'.' => return Ok(globals),
            b'c' => {
                let module = line(&mut pos)?;
                let name = line(&mut pos)?;
                globals.push(format!("{module}.{name}"));
            }
            0x93 => {
                // STACK_GLOBAL: module and name are the last two strings pushed.
                let n = strings.len();
                if n < 2 {
                    return Err((at, "STACK_GLOBAL without module and name strings".into()));
                }
                globals.push(format!("{}.{}", strings[n - 2], strings[n - 1]));
            }
            b'i' => {
                let module = line(&mut pos)?;
                let name = line(&mut pos)?;
                globals.push(format!("{module}.{name} (INST)"));
            }
            0x82..=0x84 => return Err((at, "extension-registry import (EXT1/2/4)".into())),
            // Newline-terminated arguments.
            b'I' | b'L' | b'F' | b'S' | b'P' => {
                line(&mut pos)?;
            }
            b'V' => pushed = Some(line(&mut pos)?),
            b'p' => {
                let idx: u64 = line(&mut pos)?
                    .trim()
                    .parse()
                    .map_err(|_| (at, "bad PUT".to_string()))?;
                if let Some(s) = &last_string {
                    memo.insert(idx, s.clone());
                }
            }
            b'g' => {
                let idx: u64 = line(&mut pos)?
                    .trim()
                    .parse()
                    .map_err(|_| (at, "bad GET".to_string()))?;
                pushed = memo.get(&idx).cloned();
            }
            // Fixed-size arguments.
            b'K' | 0x80 => {
                take(&mut pos, 1)?;
            }
            b'M' => {
                take(&mut pos, 2)?;
            }
            b'J' => {
                take(&mut pos, 4)?;
            }
            b'G' | 0x95 => {
                take(&mut pos, 8)?;
            }
            b'q' => {
                let idx = uint(take(&mut pos, 1)?);
                if let Some(s) = &last_string {
                    memo.insert(idx, s.clone());
                }
            }
            b'r' => {
                let idx = uint(take(&mut pos, 4)?);
                if let Some(s) = &last_string {
                    memo.insert(idx, s.clone());
                }
            }
            0x94 => {
                if let Some(s) = &last_string {
                    memo.insert(memo_next, s.clone());
                }
                memo_next += 1;
            }
            b'h' => pushed = memo.get(&uint(take(&mut pos, 1)?)).cloned(),
            b'j' => pushed = memo.get(&uint(take(&mut pos, 4)?)).cloned(),
            // Length-prefixed arguments.
            0x8c => {
                let n = uint(take(&mut pos, 1)?) as usize;
                pushed = Some(String::from_utf8_lossy(take(&mut pos, n)?).into_owned());
            }
            b'X' => {
                let n = uint(take(&mut pos, 4)?) as usize;
                pushed = Some(String::from_utf8_lossy(take(&mut pos, n)?).into_owned());
            }
            0x8d => {
                let n = uint(take(&mut pos, 8)?) as usize;
                pushed = Some(String::from_utf8_lossy(take(&mut pos, n)?).into_owned());
            }
            b'U' | b'C' | 0x8a => {
                let n = uint(take(&mut pos, 1)?) as usize;
                take(&mut pos, n)?;
            }
            b'T' | b'B' | 0x8b => {
                let n = uint(take(&mut pos, 4)?) as usize;
                take(&mut pos, n)?;
            }
            0x8e | 0x96 => {
                let n = uint(take(&mut pos, 8)?) as usize;
                take(&mut pos, n)?;
            }
            // No argument.
            b'('
            | b')'
            | b']'
            | b'}'
            | b'a'
            | b'e'
            | b's'
            | b'u'
            | b't'
            | 0x85..=0x89
            | b'N'
            | b'R'
            | b'b'
            | b'0'
            | b'1'
            | b'2'
            | b'Q'
            | 0x81
            | 0x92
            | 0x90
            | 0x91
            | 0x97
            | 0x98
            | b'd'
            | b'l'
            | b'o' => {}
            other => return Err((at, format!("unknown opcode 0x{other:02x}"))),
        }
        if let Some(s) = pushed {
            strings.push(s.clone());
            last_string = Some(s);
        } else if !matches!(op, b'q' | b'r' | 0x94 | b'p') {
            last_string = None;
        }
    }
    Err((pos, "no STOP opcode".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_globals_in_protocol_2_and_4_streams() {
        // protocol 2: GLOBAL 'collections OrderedDict', EMPTY_TUPLE, REDUCE, STOP
        let p2 = b"\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01.";
        assert_eq!(pickle_globals(p2).unwrap(), vec!["collections.OrderedDict"]);
        // protocol 4: SHORT_BINUNICODE 'os', MEMOIZE, SHORT_BINUNICODE 'system', MEMOIZE, STACK_GLOBAL
        let p4 = b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x94\x8c\x06system\x94\x93\x94.";
        assert_eq!(pickle_globals(p4).unwrap(), vec!["os.system"]);
        // The same strings popped, then fetched back from the memo.
        let memo = b"\x80\x04\x8c\x02os\x94\x8c\x06system\x9400h\x00h\x01\x93.";
        assert_eq!(pickle_globals(memo).unwrap(), vec!["os.system"]);
    }

    #[test]
    fn rejects_truncated_streams() {
        assert!(pickle_globals(b"\x80\x02ccollections").is_err());
        assert!(pickle_globals(b"\x80\x02").is_err());
    }
}
