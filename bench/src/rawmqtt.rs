//! A raw MQTT 3.1.1 client over mTLS, framed with rumqttc's codec (`mqttbytes::v4`). It sends
//! exactly the packets it is given and answers nothing by itself (no PUBREL, no PUBACK, no
//! PINGREQ, no in-flight window): what an abusive car needs, and what rumqttc's client, which
//! completes every QoS 2 exchange and paces its publishes, will not do.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use bytes::BytesMut;
use rumqttc::mqttbytes;
pub use rumqttc::mqttbytes::v4::ConnectReturnCode;
pub use rumqttc::mqttbytes::v4::Packet;
use rumqttc::mqttbytes::v4::{ConnAck, Connect};
use rustls::{ClientConfig, HandshakeKind};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Largest packet the client reads (the gateway's own limit is 144 KiB; Mosquitto's is larger).
const MAX_INCOMING: usize = 16 * 1024 * 1024;

type Stream = TlsStream<TcpStream>;

/// The sending side of a connection.
pub struct RawWriter {
    io: WriteHalf<Stream>,
    buf: BytesMut,
}

/// The receiving side of a connection.
pub struct RawReader {
    io: ReadHalf<Stream>,
    buf: BytesMut,
}

/// What the broker answered one CONNECT, and how the TLS handshake before it went.
#[derive(Debug, Clone, Copy)]
pub struct ConnectAnswer {
    /// The CONNACK's return code.
    pub code: ConnectReturnCode,
    /// The TLS handshake resumed an earlier session (as rustls on this side saw it).
    pub resumed: bool,
    /// From the TCP connect to the CONNACK.
    pub elapsed: Duration,
}

/// A connection whose CONNECT was answered, with or without success.
pub struct Opened {
    /// The sending side.
    pub writer: RawWriter,
    /// The receiving side.
    pub reader: RawReader,
    /// The CONNACK, and how the connection got there.
    pub answer: ConnectAnswer,
}

impl Opened {
    /// The two sides and the time from the TCP connect to the CONNACK, if the broker accepted
    /// the CONNECT (CONNACK 0); otherwise the code it answered, as an error.
    pub fn accepted(self) -> Result<(RawWriter, RawReader, Duration)> {
        if self.answer.code != ConnectReturnCode::Success {
            bail!("CONNACK {:?}", self.answer.code);
        }
        Ok((self.writer, self.reader, self.answer.elapsed))
    }
}

/// Connects to `addr` over TLS with `config` (verifying the server as `server_name`), sends
/// CONNECT with `client_id` (clean session) and reads the CONNACK whatever its code (see
/// [`Opened::accepted`]). Fails on no CONNACK within `limit`.
pub async fn open(
    config: Arc<ClientConfig>,
    addr: SocketAddr,
    server_name: &str,
    client_id: &str,
    keep_alive: Duration,
    limit: Duration,
) -> Result<Opened> {
    let started = Instant::now();
    let steps = async {
        let name = ServerName::try_from(server_name.to_owned()).context("server name")?;
        let tcp = TcpStream::connect(addr).await.context("TCP connect")?;
        // Small packets: without NODELAY each waits out Nagle against the delayed ACK.
        tcp.set_nodelay(true)?;
        let tls = TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .context("TLS handshake")?;
        let resumed = tls.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed);
        let (io, write) = tokio::io::split(tls);
        let mut writer = RawWriter {
            io: write,
            buf: BytesMut::new(),
        };
        let mut reader = RawReader {
            io,
            buf: BytesMut::new(),
        };
        let mut connect = Connect::new(client_id);
        connect.keep_alive = u16::try_from(keep_alive.as_secs()).unwrap_or(u16::MAX);
        connect.clean_session = true;
        writer.queue(&Packet::Connect(connect))?;
        writer.flush().await.context("send CONNECT")?;
        match reader.next().await.context("no CONNACK")? {
            Packet::ConnAck(ConnAck { code, .. }) => Ok(Opened {
                writer,
                reader,
                answer: ConnectAnswer {
                    code,
                    resumed,
                    elapsed: started.elapsed(),
                },
            }),
            other => bail!("expected CONNACK, got {other:?}"),
        }
    };
    match tokio::time::timeout(limit, steps).await {
        Ok(opened) => opened,
        Err(_) => bail!("no CONNACK within {limit:?}"),
    }
}

impl RawWriter {
    /// Encodes `packet` for the next [`RawWriter::flush`].
    pub fn queue(&mut self, packet: &Packet) -> Result<()> {
        packet
            .write(&mut self.buf, usize::MAX)
            .map_err(|e| anyhow::anyhow!("cannot encode {packet:?}: {e}"))?;
        Ok(())
    }

    /// Bytes queued and not yet written.
    pub fn queued(&self) -> usize {
        self.buf.len()
    }

    /// Writes everything queued (waiting as long as the peer does not read).
    pub async fn flush(&mut self) -> Result<()> {
        self.io.write_all(&self.buf).await?;
        self.io.flush().await?;
        self.buf.clear();
        Ok(())
    }
}

impl RawReader {
    /// The next packet; an error once the connection is closed or broken.
    pub async fn next(&mut self) -> Result<Packet> {
        loop {
            match Packet::read(&mut self.buf, MAX_INCOMING) {
                Ok(packet) => return Ok(packet),
                Err(mqttbytes::Error::InsufficientBytes(n)) => self.buf.reserve(n.max(4096)),
                Err(e) => bail!("malformed packet from the broker: {e}"),
            }
            if self.io.read_buf(&mut self.buf).await? == 0 {
                bail!("closed by the broker");
            }
        }
    }
}
