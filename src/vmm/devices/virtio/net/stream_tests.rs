//! The frame codec and the stream port, over real socket pairs and over a reader that hands
//! the bytes over in pieces.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;

use super::*;

/// Hands out its bytes `chunk` at a time, then `WouldBlock`.
struct Trickle {
    bytes: Vec<u8>,
    at: usize,
    chunk: usize,
}

impl Read for Trickle {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.at == self.bytes.len() {
            return Err(ErrorKind::WouldBlock.into());
        }
        let n = self.chunk.min(buf.len()).min(self.bytes.len() - self.at);
        buf[..n].copy_from_slice(&self.bytes[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

fn framed(frames: &[&[u8]]) -> Vec<u8> {
    let mut all = Vec::new();
    let mut one = Vec::new();
    for frame in frames {
        encode(frame, &mut one).expect("encode");
        all.extend_from_slice(&one);
    }
    all
}

#[test]
fn encode_puts_a_big_endian_length_before_the_frame() {
    let mut out = vec![9; 3];
    encode(&[0xaa; 0x0102], &mut out).expect("encode");
    assert_eq!(&out[..4], &[0, 0, 1, 2]);
    assert_eq!(out.len(), 4 + 0x0102);
}

#[test]
fn frames_split_anywhere_are_reassembled() {
    let frames: [&[u8]; 3] = [b"first frame", b"x", &[7; 300]];
    for chunk in [1, 3, 5, 1000] {
        let mut src = Trickle {
            bytes: framed(&frames),
            at: 0,
            chunk,
        };
        let mut decoder = Decoder::new(1514);
        for want in frames {
            let got = decoder
                .next_frame(&mut src)
                .unwrap_or_else(|err| panic!("chunk {chunk}: {err}"))
                .to_vec();
            assert_eq!(got, want, "chunk {chunk}");
        }
        let end = decoder.next_frame(&mut src).expect_err("nothing more");
        assert_eq!(end.kind(), ErrorKind::WouldBlock);
    }
}

/// The attack: the peer (another process of the user) announces a frame far larger than the
/// device's buffer, hoping it is allocated or copied past the buffer. It is skipped whole and
/// the frames after it still arrive intact.
#[test]
fn a_frame_longer_than_the_buffer_is_skipped_and_the_stream_stays_in_step() {
    let huge = vec![0x55; 5000];
    let bytes = framed(&[b"before", &huge, b"", b"after"]);
    let mut src = Trickle {
        bytes,
        at: 0,
        chunk: 777,
    };
    let mut decoder = Decoder::new(1514);
    assert_eq!(decoder.next_frame(&mut src).expect("before"), b"before");
    assert_eq!(decoder.next_frame(&mut src).expect("after"), b"after");
    assert_eq!(decoder.dropped(), 2, "the long frame and the empty one");
}

#[test]
fn a_four_gib_announcement_allocates_nothing_and_waits_for_bytes() {
    let mut src = Trickle {
        bytes: vec![0xff, 0xff, 0xff, 0xff, 1, 2, 3],
        at: 0,
        chunk: 64,
    };
    let mut decoder = Decoder::new(1514);
    let err = decoder.next_frame(&mut src).expect_err("incomplete");
    assert_eq!(err.kind(), ErrorKind::WouldBlock);
    assert_eq!(decoder.body.len(), 1514);
}

#[test]
fn the_end_of_the_stream_is_an_error_not_an_empty_frame() {
    let (mut ours, theirs) = UnixStream::pair().expect("pair");
    drop(theirs);
    let mut decoder = Decoder::new(1514);
    let err = decoder.next_frame(&mut ours).expect_err("closed");
    assert_eq!(err.kind(), ErrorKind::UnexpectedEof);
}

#[test]
fn the_port_swaps_the_vnet_header_for_the_length_prefix_both_ways() {
    let (ours, mut peer) = UnixStream::pair().expect("pair");
    ours.set_nonblocking(true).expect("nonblocking");
    let mut port = StreamPort::new(ours, 65_536);
    // Guest to peer: the 12-byte header goes, the length comes.
    let mut with_header = vec![0xee; VNET_HDR_LEN];
    with_header.extend_from_slice(b"ethernet frame");
    assert_eq!(port.write(&with_header).expect("write"), with_header.len());
    let mut got = [0; 4 + 14];
    peer.read_exact(&mut got).expect("peer reads");
    assert_eq!(&got[..4], &14u32.to_be_bytes());
    assert_eq!(&got[4..], b"ethernet frame");
    // Peer to guest: a zeroed header before the frame; then nothing (WouldBlock).
    peer.write_all(&framed(&[b"reply"])).expect("peer writes");
    let mut buf = vec![0xff; 65_536 + VNET_HDR_LEN];
    let n = port.read(&mut buf).expect("a frame");
    assert_eq!(n, VNET_HDR_LEN + 5);
    assert_eq!(&buf[..VNET_HDR_LEN], &[0; VNET_HDR_LEN]);
    assert_eq!(&buf[VNET_HDR_LEN..n], b"reply");
    let err = port.read(&mut buf).expect_err("empty");
    assert_eq!(err.kind(), ErrorKind::WouldBlock);
}

#[test]
fn frames_sent_faster_than_the_peer_reads_arrive_whole_or_not_at_all() {
    let (ours, peer) = UnixStream::pair().expect("pair");
    ours.set_nonblocking(true).expect("nonblocking");
    let mut frame = vec![0; VNET_HDR_LEN];
    frame.extend((0..1500u32).map(|i| (i % 251) as u8));
    let want = frame[VNET_HDR_LEN..].to_vec();
    // The peer reads (blocking) until the port is gone, checking every frame.
    let reader = std::thread::spawn(move || {
        let mut peer = peer;
        let mut decoder = Decoder::new(65_536);
        let mut read = 0usize;
        loop {
            match decoder.next_frame(&mut peer) {
                Ok(got) => {
                    assert_eq!(got, want.as_slice(), "frame {read} intact");
                    read += 1;
                }
                Err(err) if err.kind() == ErrorKind::UnexpectedEof => {
                    break (read, decoder.dropped())
                }
                Err(err) => panic!("{err}"),
            }
        }
    });
    let mut port = StreamPort::new(ours, 65_536);
    // 3 MB: more than a socket buffer, so some writes find it full or take a frame in part.
    let (mut accepted, mut refused) = (0usize, 0usize);
    for _ in 0..2000 {
        match port.write(&frame) {
            Ok(n) => {
                assert_eq!(n, frame.len());
                accepted += 1;
            }
            Err(err) if err.kind() == ErrorKind::WouldBlock => refused += 1,
            Err(err) => panic!("{err}"),
        }
    }
    drop(port);
    let (read, dropped) = reader.join().expect("reader");
    assert_eq!(read, accepted, "{refused} refused");
    assert_eq!(dropped, 0);
}
