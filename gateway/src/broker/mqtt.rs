//! MQTT 3.1.1 framing over any byte stream, with rumqttc's codec (`mqttbytes::v4`), and
//! buffers that shrink back once a burst is over, so an idle car holds almost nothing here.

use std::io;

use bytes::BytesMut;
use rumqttc::mqttbytes::{self, v4::Packet};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::lifecycle::DisconnectReason;

/// Bytes asked of the stream per read when the packet's size is not known yet.
const READ_CHUNK: usize = 512;
/// Buffers larger than this are given back when they are empty.
const KEEP_WHEN_IDLE: usize = 2048;

/// One car's MQTT stream.
pub(crate) struct MqttIo<S> {
    io: S,
    read: BytesMut,
    write: BytesMut,
    max_packet_bytes: usize,
}

impl<S: AsyncRead + AsyncWrite + Unpin> MqttIo<S> {
    pub(crate) fn new(io: S, max_packet_bytes: usize) -> MqttIo<S> {
        MqttIo {
            io,
            read: BytesMut::new(),
            write: BytesMut::new(),
            max_packet_bytes,
        }
    }

    /// Reads one packet. Cancel-safe: partial input stays in the buffer.
    pub(crate) async fn read(&mut self) -> Result<Packet, DisconnectReason> {
        loop {
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

    /// Writes every queued packet, in one TLS write where it fits.
    pub(crate) async fn flush(&mut self) -> Result<(), DisconnectReason> {
        if self.write.is_empty() {
            return Ok(());
        }
        self.io.write_all(&self.write).await.map_err(lost)?;
        self.io.flush().await.map_err(lost)?;
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

    /// Closes the stream (for TLS, with close_notify).
    pub(crate) async fn shutdown(&mut self) {
        let _ = self.io.shutdown().await;
    }
}

fn lost(e: io::Error) -> DisconnectReason {
    DisconnectReason::ConnectionLost(e.to_string())
}
