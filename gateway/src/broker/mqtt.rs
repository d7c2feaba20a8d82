//! MQTT 3.1.1 framing over any byte stream, with rumqttc's codec (`mqttbytes::v4`), and
//! buffers that shrink back once a burst is over, so an idle car holds almost nothing here.
//!
//! The codec is lenient where MQTT 3.1.1 says a server must close the connection: reserved
//! bits of the fixed header (§2.2.2) and CONNECT's reserved flag (§3.1.2.3). Those are checked
//! here, on the raw bytes, before a packet is decoded.

use std::io;
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::mqttbytes::{self, v4::Packet};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::error::Elapsed;
use tokio::time::timeout;

use super::lifecycle::DisconnectReason;

/// Bytes asked of the stream per read when the packet's size is not known yet.
const READ_CHUNK: usize = 512;
/// Buffers larger than this are given back when they are empty.
const KEEP_WHEN_IDLE: usize = 2048;
/// Longest the close (TLS close_notify) waits for a car that takes no bytes.
const CLOSE_LIMIT: Duration = Duration::from_secs(2);

/// One car's MQTT stream.
pub(crate) struct MqttIo<S> {
    io: S,
    read: BytesMut,
    write: BytesMut,
    max_packet_bytes: usize,
    write_stall_timeout: Duration,
}

impl<S: AsyncRead + AsyncWrite + Unpin> MqttIo<S> {
    /// A stream whose packets may be `max_packet_bytes` long, and whose writes fail with
    /// [`DisconnectReason::SlowConsumer`] after `write_stall_timeout` without the car taking a byte.
    pub(crate) fn new(io: S, max_packet_bytes: usize, write_stall_timeout: Duration) -> MqttIo<S> {
        MqttIo {
            io,
            read: BytesMut::new(),
            write: BytesMut::new(),
            max_packet_bytes,
            write_stall_timeout,
        }
    }

    /// Reads one packet. Cancel-safe: partial input stays in the buffer.
    pub(crate) async fn read(&mut self) -> Result<Packet, DisconnectReason> {
        loop {
            if let Some(problem) = reserved_bits_problem(&self.read) {
                return Err(DisconnectReason::ProtocolError(problem.into()));
            }
            let wanted = match Packet::read(&mut self.read, self.max_packet_bytes) {
                Ok(packet) => {
                    if self.read.is_empty() && self.read.capacity() > KEEP_WHEN_IDLE {
                        self.read = BytesMut::new();
                    }
                    return Ok(packet);
                }
                Err(mqttbytes::Error::InsufficientBytes(n)) => n,
                Err(mqttbytes::Error::PayloadSizeLimitExceeded(n)) => {
                    return Err(DisconnectReason::ProtocolError(format!(
                        "packet of {n} bytes exceeds the {}-byte limit",
                        self.max_packet_bytes
                    )));
                }
                Err(e) => return Err(DisconnectReason::ProtocolError(e.to_string())),
            };
            self.read.reserve(wanted.max(READ_CHUNK));
            match self.io.read_buf(&mut self.read).await {
                Ok(0) if self.read.is_empty() => return Err(DisconnectReason::ConnectionLost("closed by peer".into())),
                Ok(0) => return Err(DisconnectReason::ConnectionLost("closed mid-packet".into())),
                Ok(_) => {}
                Err(e) => return Err(lost(e)),
            }
        }
    }

    /// Encodes `packet` for the next [`MqttIo::flush`].
    pub(crate) fn queue(&mut self, packet: &Packet) -> Result<(), DisconnectReason> {
        packet
            .write(&mut self.write, usize::MAX)
            .map_err(|e| DisconnectReason::ProtocolError(format!("cannot encode a packet for the car: {e}")))?;
        Ok(())
    }

    /// Writes every queued packet, in one TLS write where it fits. A car that takes no bytes
    /// for the write stall timeout fails it: TCP keeps a connection whose reader stopped alive
    /// for ever, and the session could then not be stopped, kicked or revoked.
    pub(crate) async fn flush(&mut self) -> Result<(), DisconnectReason> {
        if self.write.is_empty() {
            return Ok(());
        }
        let (limit, mut written) = (self.write_stall_timeout, 0);
        while written < self.write.len() {
            match within_stall(timeout(limit, self.io.write(&self.write[written..])).await)? {
                0 => return Err(DisconnectReason::ConnectionLost("closed by peer".into())),
                n => written += n,
            }
        }
        within_stall(timeout(limit, self.io.flush()).await)?;
        if self.write.capacity() > KEEP_WHEN_IDLE {
            self.write = BytesMut::new();
        } else {
            self.write.clear();
        }
        Ok(())
    }

    /// Queues and flushes one packet.
    pub(crate) async fn send(&mut self, packet: &Packet) -> Result<(), DisconnectReason> {
        self.queue(packet)?;
        self.flush().await
    }

    /// Closes the stream (for TLS, with close_notify), giving up after a moment on a car that
    /// takes no bytes.
    pub(crate) async fn shutdown(&mut self) {
        let _ = timeout(CLOSE_LIMIT, self.io.shutdown()).await;
    }
}

/// What is wrong with the reserved bits of the packet at the start of `buffer`, if anything.
/// Looks only at what is there: a packet not fully read yet is judged when it is.
pub(crate) fn reserved_bits_problem(buffer: &[u8]) -> Option<&'static str> {
    let &first = buffer.first()?;
    let (kind, flags) = (first >> 4, first & 0x0f);
    let expected = match kind {
        // PUBLISH: the flags are DUP, QoS and RETAIN; QoS 3 does not exist.
        3 => return (flags & 0b0110 == 0b0110).then_some("PUBLISH with QoS 3"),
        // PUBREL, SUBSCRIBE, UNSUBSCRIBE.
        6 | 8 | 10 => 0b0010,
        _ => 0,
    };
    if flags != expected {
        return Some("reserved bits of the fixed header are not as MQTT 3.1.1 requires");
    }
    if kind == 1 {
        // CONNECT: variable header = protocol name (length-prefixed), level, flags. Judged
        // once the whole packet is there; the remaining length takes 1 to 4 bytes.
        let frame = mqttbytes::check(buffer.iter(), usize::MAX).ok()?;
        if buffer.len() < frame.frame_length() {
            return None;
        }
        let length_bytes = buffer[1..].iter().take(4).position(|b| b & 0x80 == 0)? + 1;
        // This packet's bytes only: a CONNECT too short for its flags is malformed, whatever
        // the next packet holds.
        let body = buffer.get(1 + length_bytes..frame.frame_length())?;
        let name_len = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
        let connect_flags = *body.get(2 + name_len + 1)?;
        if connect_flags & 1 != 0 {
            return Some("CONNECT with its reserved flag set");
        }
    }
    None
}

/// The outcome of one write or flush bounded by the write stall timeout.
fn within_stall<T>(outcome: Result<io::Result<T>, Elapsed>) -> Result<T, DisconnectReason> {
    match outcome {
        Ok(done) => done.map_err(lost),
        Err(_) => Err(DisconnectReason::SlowConsumer),
    }
}

fn lost(e: io::Error) -> DisconnectReason {
    DisconnectReason::ConnectionLost(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CONNECT for client id "c" with the given connect flags.
    fn connect(flags: u8) -> Vec<u8> {
        let mut packet = vec![0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, flags, 0, 60, 0, 1, b'c'];
        packet[1] = (packet.len() - 2) as u8;
        packet
    }

    #[test]
    fn connect_with_its_reserved_flag_set_is_refused() {
        assert_eq!(reserved_bits_problem(&connect(0b10)), None);
        assert_eq!(
            reserved_bits_problem(&connect(0b11)),
            Some("CONNECT with its reserved flag set")
        );
        // Not all there yet: judged once it is.
        assert_eq!(reserved_bits_problem(&connect(0b11)[..9]), None);
    }

    #[test]
    fn a_connect_is_judged_on_its_own_bytes_not_the_next_packets() {
        // Remaining length 1: the frame ends before its protocol name does. The bytes after it
        // belong to the next packet, and the flags byte would fall on one with bit 0 set.
        let mut stream = vec![0x10, 1, 0, 4, b'M', b'Q', b'T', b'T', 4, 0xff];
        assert_eq!(reserved_bits_problem(&stream), None);
        stream.truncate(3);
        assert_eq!(reserved_bits_problem(&stream), None);
    }

    #[test]
    fn fixed_header_flags_must_be_the_reserved_values() {
        assert!(reserved_bits_problem(&[0xc0, 0]).is_none(), "PINGREQ");
        assert!(reserved_bits_problem(&[0xc1, 0]).is_some(), "PINGREQ with a flag");
        assert!(reserved_bits_problem(&[0x62, 2, 0, 1]).is_none(), "PUBREL");
        assert!(
            reserved_bits_problem(&[0x60, 2, 0, 1]).is_some(),
            "PUBREL without its 0010"
        );
        assert!(reserved_bits_problem(&[0x82]).is_none(), "SUBSCRIBE");
        assert!(reserved_bits_problem(&[0x36]).is_some(), "PUBLISH QoS 3");
        assert!(reserved_bits_problem(&[0x3b]).is_none(), "PUBLISH DUP QoS 1 RETAIN");
    }
}
