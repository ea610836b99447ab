//! One value as one datagram: its codec bytes inline when small, else in a
//! sealed memfd passed beside a short datagram, followed in both cases by
//! the descriptors of the handles inside the value.
//!
//! A datagram is `[INLINE] bytes…` or `[SEALED] len:u64le` (the memfd is
//! the first descriptor). Whatever arrives is untrusted: it was copied out
//! of the socket (or sits in a memfd nobody can write any more) and is
//! decoded by the codec, which checks everything.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Error;
use crate::codec::attach::{self, Attached};
use crate::codec::{ChunkReader, ChunkWriter, Problem};
use crate::sys::{self, Sealed};

/// Values encoded up to this size travel inside their datagram.
pub(super) const INLINE: usize = 32 * 1024;
/// A receive buffer: the largest datagram procpool sends, and one byte
/// more, to tell a longer one (refused).
pub(super) const BUFFER: usize = INLINE + 2;

const TAG_INLINE: u8 = 1;
const TAG_SEALED: u8 = 2;
/// A bounded queue's credit (see `queue.rs`).
pub(super) const TAG_CREDIT: u8 = 3;

/// An encoded value, ready to send.
pub(super) struct Outgoing {
    datagram: Vec<u8>,
    sealed: Option<Sealed>,
    attached: Attached,
}

/// Encodes `value` for `what` (named in errors, e.g. `procpool::Queue::put`).
pub(super) fn encode<T: Serialize + 'static>(value: &T, what: &str) -> Result<Outgoing, Error> {
    let fail =
        |problem: Problem| crate::codec::error_for(what, "serialize the value".to_owned(), problem);
    let mut chunk = ChunkWriter::default();
    chunk.push(value).map_err(fail)?;
    let attached = chunk.take_attached();
    let bytes = chunk.finish();
    if bytes.len() <= INLINE {
        let mut datagram = Vec::with_capacity(bytes.len() + 1);
        datagram.push(TAG_INLINE);
        datagram.extend_from_slice(&bytes);
        return Ok(Outgoing {
            datagram,
            sealed: None,
            attached,
        });
    }
    let sealed = Sealed::create("procpool-value", &bytes).map_err(|err| {
        super::system(
            &format!(
                "{what}: cannot put a value of {} bytes in shared memory",
                bytes.len()
            ),
            err,
        )
    })?;
    let mut datagram = vec![TAG_SEALED];
    datagram.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    Ok(Outgoing {
        datagram,
        sealed: Some(sealed),
        attached,
    })
}

impl Outgoing {
    /// Sends it as one datagram on `socket`, without blocking.
    pub(super) fn send(&self, socket: BorrowedFd<'_>) -> rustix::io::Result<()> {
        let mut fds: Vec<BorrowedFd<'_>> = Vec::with_capacity(1 + self.attached.len());
        fds.extend(self.sealed.as_ref().map(Sealed::fd));
        fds.extend(self.attached.iter().map(|a| a.fd()));
        sys::send_packet(socket, &self.datagram, &fds)
    }
}

/// Decodes a datagram of `bytes` that came with `fds`.
pub(super) fn decode<T: DeserializeOwned + 'static>(
    bytes: &[u8],
    fds: Vec<OwnedFd>,
    what: &str,
) -> Result<T, Error> {
    let corrupt =
        |why: String| Error::Ipc(format!("{what}: a value that is not procpool's: {why}"));
    let mut fds = fds.into_iter();
    let sealed;
    let body = match bytes.split_first() {
        Some((&TAG_INLINE, body)) => body,
        Some((&TAG_SEALED, len)) => {
            let len = <[u8; 8]>::try_from(len)
                .map(u64::from_le_bytes)
                .map_err(|_| corrupt(format!("a header of {} bytes", bytes.len())))?;
            let fd = fds
                .next()
                .ok_or_else(|| corrupt("a large value without its memory".into()))?;
            sealed = Sealed::open(fd).map_err(corrupt)?;
            if sealed.bytes().len() as u64 != len {
                return Err(corrupt(format!(
                    "{len} bytes announced, {} in its memory",
                    sealed.bytes().len()
                )));
            }
            sealed.bytes()
        }
        Some((tag, _)) => return Err(corrupt(format!("an unknown tag {tag}"))),
        None => return Err(corrupt("an empty datagram".into())),
    };
    let decoded = attach::receiving(fds.collect(), || {
        let mut reader = ChunkReader::new(body)?;
        let value = reader.next::<T>()?;
        reader.finish()?;
        Ok::<T, Problem>(value)
    });
    decoded.map_err(|problem| crate::codec::error_for(what, "decode the value".to_owned(), problem))
}

/// Reads one datagram on `socket` into `buffer`, without blocking:
/// `Ok(None)` when none is there, `Err` (described) for one that is not
/// procpool's or a closed peer.
pub(super) fn recv(
    socket: impl AsFd,
    buffer: &mut [u8],
) -> Result<Option<(usize, Vec<OwnedFd>)>, Received> {
    match sys::recv_packet(socket.as_fd(), buffer) {
        Err(rustix::io::Errno::AGAIN) => Ok(None),
        Err(err) => Err(Received::System(err.into())),
        Ok(packet) if packet.len == 0 && packet.fds.is_empty() => Err(Received::Closed),
        Ok(packet) if packet.truncated => Err(Received::Bad(format!(
            "a datagram longer than {} bytes",
            buffer.len()
        ))),
        Ok(packet) if packet.fds_dropped => Err(Received::Bad(
            "a datagram whose descriptors this process could not take (too many, or `ulimit -n` \
             reached)"
                .into(),
        )),
        Ok(packet) => Ok(Some((packet.len, packet.fds))),
    }
}

/// Why [`recv`] read no value.
pub(super) enum Received {
    /// The other end is closed and nothing is left.
    Closed,
    /// Not a datagram of procpool's (described).
    Bad(String),
    System(std::io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip<T: Serialize + DeserializeOwned + 'static>(value: &T) -> T {
        let out = encode(value, "test").unwrap();
        let fds = out
            .sealed
            .iter()
            .map(|s| rustix::io::fcntl_dupfd_cloexec(s.fd(), 3).unwrap())
            .collect();
        decode(&out.datagram, fds, "test").unwrap()
    }

    #[test]
    fn small_and_large_values_cross() {
        assert_eq!(round_trip(&7u64), 7);
        let large: Vec<u8> = (0..3 * INLINE).map(|i| i as u8).collect();
        let out = encode(&large, "test").unwrap();
        assert!(out.sealed.is_some() && out.datagram.len() == 9);
        assert_eq!(round_trip(&large), large);
    }

    #[test]
    fn a_large_value_must_come_with_its_sealed_memory() {
        let large = vec![1u8; 2 * INLINE];
        let out = encode(&large, "test").unwrap();
        assert!(decode::<Vec<u8>>(&out.datagram, Vec::new(), "test").is_err());
        // The wrong length announced.
        let mut lying = out.datagram.clone();
        lying[1] ^= 1;
        let fd = rustix::io::fcntl_dupfd_cloexec(out.sealed.as_ref().unwrap().fd(), 3).unwrap();
        let err = decode::<Vec<u8>>(&lying, vec![fd], "test").unwrap_err();
        assert!(err.to_string().contains("announced"), "{err}");
        // Memory someone can still write is refused.
        let unsealed = rustix::fs::memfd_create("x", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        let err = decode::<Vec<u8>>(&out.datagram, vec![unsealed], "test").unwrap_err();
        assert!(err.to_string().contains("not sealed"), "{err}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Hostile datagrams decode to an error or a value, never a panic.
        #[test]
        fn arbitrary_datagrams_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode::<u64>(&bytes, Vec::new(), "test");
            let _ = decode::<(String, Option<Vec<i32>>)>(&bytes, Vec::new(), "test");
            let _ = decode::<crate::exchange::Queue<u8>>(&bytes, Vec::new(), "test");
            let _ = decode::<crate::exchange::Shared<[u64]>>(&bytes, Vec::new(), "test");
            let _ = decode::<crate::exchange::Shared<String>>(&bytes, Vec::new(), "test");
        }

        /// Inline datagrams whose body is arbitrary, with a stray descriptor.
        #[test]
        fn arbitrary_bodies_with_descriptors_never_panic(body in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut datagram = vec![TAG_INLINE];
            datagram.extend_from_slice(&body);
            let fd = rustix::fs::memfd_create("x", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
            let _ = decode::<crate::exchange::Event>(&datagram, vec![fd], "test");
        }
    }
}
