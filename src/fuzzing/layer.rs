//! The layer applier: tar streams decoded from the input (so that the fuzzer reaches deep into
//! the applier with names, links and whiteouts that interact), or the raw input as a layer,
//! applied into a fresh rootfs. Oracle: nothing outside the rootfs changes (a sentinel tree
//! beside it keeps its listing, content, owners and modes).

use std::io::Write;
use std::sync::OnceLock;

use super::input::Input;
use super::tree::Scratch;
use crate::image::layer::{Applier, Limits};

/// Entries per input, over all layers.
const MAX_ENTRIES: usize = 32;
/// Path components entry names are made of.
const COMPONENTS: &[&[u8]] = &[
    b"a",
    b"b",
    b"c",
    b"..",
    b".",
    b"",
    b"etc",
    b"sentinel",
    b".wh.a",
    b".wh..wh..opq",
    b"d",
];
/// Owners entries get.
const OWNERS: &[u64] = &[0, 0, 1000, 4242, 65534];

/// The first byte picks raw mode (the rest is one layer as is) or decoded mode.
pub fn layer(data: &[u8]) {
    let scratch = scratch();
    let _input = scratch.reset();
    let mut input = Input::new(data);
    let mode = input.byte();
    let layers = if mode.is_multiple_of(4) {
        vec![input.rest().to_vec()]
    } else {
        decode_layers(&mut input, scratch, mode % 4 == 1)
    };
    let mut applier = Applier::new(&scratch.dir, "fuzz", limits());
    applier.set_prefix((mode & 0x80 != 0).then_some(&b"rootfs/"[..]));
    let mut applied = true;
    for (index, tar) in layers.iter().enumerate() {
        let size = u64::try_from(tar.len()).unwrap_or(u64::MAX);
        if applier
            .apply(&format!("layer{index}"), size, &tar[..])
            .is_err()
        {
            applied = false;
            break;
        }
    }
    if applied {
        let _ = applier.finish();
    }
    scratch.check("applying a layer");
}

/// One scratch directory per process: the rootfs is emptied for every input.
fn scratch() -> &'static Scratch {
    static SCRATCH: OnceLock<Scratch> = OnceLock::new();
    SCRATCH.get_or_init(|| Scratch::new("rootfs"))
}

fn limits() -> Limits {
    Limits {
        max_bytes: 1 << 20,
        max_entries: 256,
        max_ratio: 100,
    }
}

/// Decodes the layers' tar streams (gzip-compressed with `gzip`).
fn decode_layers(input: &mut Input<'_>, scratch: &Scratch, gzip: bool) -> Vec<Vec<u8>> {
    let targets = link_targets(scratch);
    let mut layers = Vec::new();
    let mut builder = tar::Builder::new(Vec::new());
    let mut entries = 0;
    while !input.is_empty() && entries < MAX_ENTRIES {
        let op = input.byte();
        if op % 12 == 11 {
            layers.push(finish_tar(builder, gzip));
            builder = tar::Builder::new(Vec::new());
            continue;
        }
        entries += 1;
        let name = decode_name(input);
        let mut header = tar::Header::new_gnu();
        let (kind, link) = match op % 12 {
            0 | 1 => (tar::EntryType::Regular, None),
            2 | 3 => (tar::EntryType::Directory, None),
            4 | 5 => (
                tar::EntryType::Symlink,
                Some(input.pick_ref(&targets).clone()),
            ),
            6 => (tar::EntryType::Link, Some(input.pick_ref(&targets).clone())),
            7 => (tar::EntryType::Fifo, None),
            8 => (tar::EntryType::Char, None),
            9 => (tar::EntryType::Block, None),
            _ => (tar::EntryType::Symlink, Some(decode_name(input))),
        };
        header.set_entry_type(kind);
        header.set_mode(u32::from(input.u16()) & 0o7777);
        header.set_uid(input.pick(OWNERS));
        header.set_gid(input.pick(OWNERS));
        header.set_mtime(u64::from(input.u32()));
        let content = if kind == tar::EntryType::Regular {
            let len = input_len(input);
            input.take(usize::from(len)).to_vec()
        } else {
            Vec::new()
        };
        header.set_size(u64::try_from(content.len()).unwrap_or(0));
        if let Some(gnu) = header.as_gnu_mut() {
            copy_field(&mut gnu.name, &name);
            if let Some(link) = &link {
                copy_field(&mut gnu.linkname, link);
            }
        }
        header.set_cksum();
        if builder.append(&header, &content[..]).is_err() {
            break;
        }
    }
    layers.push(finish_tar(builder, gzip));
    layers
}

fn input_len(input: &mut Input<'_>) -> u8 {
    input.byte() % 64
}

/// Raw bytes into a fixed-size tar header field (truncated, NUL-padded).
fn copy_field(field: &mut [u8], value: &[u8]) {
    field.fill(0);
    let n = value.len().min(field.len());
    field[..n].copy_from_slice(&value[..n]);
}

/// An entry name: an optional `./` or `/` prefix, one to four components, maybe a trailing
/// slash.
fn decode_name(input: &mut Input<'_>) -> Vec<u8> {
    let shape = input.byte();
    let mut name = match shape % 4 {
        0 => b"./".to_vec(),
        1 => b"/".to_vec(),
        _ => Vec::new(),
    };
    let count = 1 + usize::from((shape >> 2) % 4);
    for index in 0..count {
        if index > 0 {
            name.push(b'/');
        }
        name.extend_from_slice(input.pick(COMPONENTS));
    }
    if shape & 0x40 != 0 {
        name.push(b'/');
    }
    name
}

/// Link targets: inside the rootfs, climbing out of it relatively, and the sentinel's
/// absolute paths (what a hostile image would aim at on the host).
fn link_targets(scratch: &Scratch) -> Vec<Vec<u8>> {
    let sentinel = scratch.sentinel.to_string_lossy().into_owned();
    let base = scratch.base.to_string_lossy().into_owned();
    [
        "a".to_string(),
        "b".to_string(),
        "a/b".to_string(),
        ".".to_string(),
        "..".to_string(),
        "../..".to_string(),
        "../sentinel".to_string(),
        "../../sentinel".to_string(),
        "../sentinel/f".to_string(),
        "../sentinel/d".to_string(),
        "/a".to_string(),
        sentinel.clone(),
        format!("{sentinel}/f"),
        format!("{sentinel}/d"),
        format!("{sentinel}/l"),
        base,
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect()
}

fn finish_tar(builder: tar::Builder<Vec<u8>>, gzip: bool) -> Vec<u8> {
    let tar = builder.into_inner().unwrap_or_default();
    if !gzip {
        return tar;
    }
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    if encoder.write_all(&tar).is_err() {
        return tar;
    }
    encoder.finish().unwrap_or(tar)
}
