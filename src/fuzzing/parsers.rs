//! Targets for the parsers of untrusted documents: image manifests and configs, CNI plugin
//! output, registry auth challenges, and agent protocol frames.

use std::os::unix::process::ExitStatusExt;

use podvm_protocol::{FrameDecoder, Message, ProtocolError};

use super::input::Input;
use crate::image::{aci, auth, config, manifest};
use crate::net::{cni, dns};

/// Content types a registry may send with a manifest.
const HEADER_TYPES: &[Option<&str>] = &[
    None,
    Some("application/vnd.oci.image.manifest.v1+json"),
    Some("application/vnd.oci.image.index.v1+json"),
    Some("application/vnd.docker.distribution.manifest.v2+json"),
    Some("application/vnd.docker.distribution.manifest.list.v2+json"),
];

/// OCI image manifests and indexes, OCI image configs and appc (ACI) image manifests: the
/// first byte picks the parser, the rest is the document.
pub fn image_manifest(data: &[u8]) {
    let mut input = Input::new(data);
    let selector = input.byte();
    let doc = input.rest();
    match selector % 4 {
        0 | 1 => {
            let header = HEADER_TYPES[usize::from(selector / 4) % HEADER_TYPES.len()];
            if let Ok(manifest::Parsed::Image { layers, .. }) = manifest::parse("fuzz", doc, header)
            {
                assert!(
                    layers.iter().all(|l| !l.media_type.contains("encrypted")),
                    "an encrypted layer was accepted"
                );
            }
        }
        2 => {
            let _ = config::app_defaults("fuzz", doc);
        }
        _ => {
            let _ = aci::app_defaults("fuzz", doc);
            let _ = aci::appc_name("fuzz", doc);
            let _ = aci::image_name("fuzz", doc);
        }
    }
}

/// What a CNI plugin prints: its result (as the pod's network is built from it, DNS included)
/// or its error document.
pub fn cni_result(data: &[u8]) {
    if let Ok(result) = serde_json::from_slice::<cni::CniResult>(data) {
        let _ = dns::resolv_conf(&Default::default(), std::slice::from_ref(&result.dns));
        let _ = serde_json::to_vec(&result);
    }
    let _ = cni::error_message(data, data, std::process::ExitStatus::from_raw(256));
}

/// A `WWW-Authenticate` header of a registry.
pub fn auth_challenge(data: &[u8]) {
    let header = String::from_utf8_lossy(data);
    if let Some(challenge) = auth::parse_challenge(&header) {
        assert_eq!(
            challenge.scheme,
            challenge.scheme.to_ascii_lowercase(),
            "the scheme is lowercase"
        );
    }
}

/// Agent protocol frames as the host reads them from a hostile guest, arriving in chunks whose
/// sizes the input picks: a decoded message re-encodes to a frame that decodes to it again.
pub fn agent_protocol(data: &[u8]) {
    let mut input = Input::new(data);
    let chunk = usize::from(input.byte()).max(1);
    let stream = input.rest();
    let mut decoder = FrameDecoder::new();
    for piece in stream.chunks(chunk) {
        decoder.push(piece);
        loop {
            match decoder.next_message() {
                Ok(Some(message)) => round_trip(&message),
                Ok(None) => break,
                Err(_) => {
                    assert_eq!(
                        decoder.pending(),
                        0,
                        "the decoder keeps no bytes after an error"
                    );
                    break;
                }
            }
        }
    }
    let mut reader = stream;
    while let Ok(Some(message)) = Message::read_from(&mut reader) {
        round_trip(&message);
    }
}

fn round_trip(message: &Message) {
    let frame = match message.encode() {
        Ok(frame) => frame,
        // Re-serialised JSON may be longer than the frame it came in (escapes).
        Err(ProtocolError::Oversized(_)) => return,
        Err(err) => panic!("a decoded message does not encode: {err}"),
    };
    let mut decoder = FrameDecoder::new();
    decoder.push(&frame);
    match decoder.next_message() {
        Ok(Some(again)) => assert_eq!(&again, message, "round trip"),
        other => panic!("an encoded message does not decode: {other:?}"),
    }
    assert_eq!(decoder.pending(), 0, "one frame per message");
}
