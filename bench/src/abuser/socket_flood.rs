//! The unauthenticated flood: sockets that open and send half a ClientHello, and a car trying to
//! connect meanwhile (how long it took, whether it got in).

use super::*;

/// What the socket flood did, and what a car connecting meanwhile saw.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SocketFloodOutcome {
    /// Sockets held open at once.
    pub sockets: usize,
    /// Their source address.
    pub source: String,
    /// TCP connections the flood opened.
    pub opened: u64,
    /// Connections it could not open.
    pub open_failures: u64,
    /// The first such failure.
    pub first_open_error: Option<String>,
    /// Closed by the broker within 0.5 s of opening (refused at once).
    pub closed_at_once: u64,
    /// Closed by the broker later (dropped after waiting, e.g. the first-flight timeout).
    pub closed_later: u64,
    /// Still open when the flood ended.
    pub open_at_end: u64,
    /// The car connecting every second meanwhile.
    pub car: CarConnects,
    /// The gateway's own count of refused and dropped sockets during the flood.
    pub gateway_refusals: Option<Refusals>,
}

/// A car connecting every second (full TLS handshake, CONNECT, CONNACK, DISCONNECT).
#[derive(Debug, Clone, Default, Serialize)]
pub struct CarConnects {
    /// Attempts.
    pub attempts: u64,
    /// Attempts that got CONNACK 0.
    pub connected: u64,
    /// The first failure.
    pub first_error: Option<String>,
    /// From the TCP connect to the CONNACK.
    pub latency: Summary,
}

/// Holds `sockets` unauthenticated sockets from `source` to `addr` until `until`, each
/// re-opened as soon as the broker drops it, on a thread and runtime of its own.
pub fn spawn_socket_flood(
    addr: SocketAddr,
    source: IpAddr,
    sockets: usize,
    until: Instant,
) -> std::thread::JoinHandle<Result<SocketFloodOutcome>> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        Ok(runtime.block_on(socket_flood(addr, source, sockets, until)))
    })
}

pub(super) async fn socket_flood(
    addr: SocketAddr,
    source: IpAddr,
    sockets: usize,
    until: Instant,
) -> SocketFloodOutcome {
    let out = Arc::new(Mutex::new(SocketFloodOutcome {
        sockets,
        source: source.to_string(),
        ..SocketFloodOutcome::default()
    }));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..sockets {
        let out = out.clone();
        let first: &'static [u8] = if i % 2 == 0 { &[] } else { HALF_CLIENT_HELLO };
        tasks.spawn(async move {
            while Instant::now() < until {
                let opened = Instant::now();
                let socket = async {
                    let socket = TcpSocket::new_v4()?;
                    socket.bind(SocketAddr::new(source, 0))?;
                    let mut stream = socket.connect(addr).await?;
                    stream.write_all(first).await?;
                    std::io::Result::Ok(stream)
                };
                let mut stream = match socket.await {
                    Ok(stream) => stream,
                    Err(e) => {
                        {
                            let mut o = lock(&out);
                            o.open_failures += 1;
                            o.first_open_error.get_or_insert_with(|| e.to_string());
                        }
                        tokio::time::sleep(RETRY_PAUSE).await;
                        continue;
                    }
                };
                lock(&out).opened += 1;
                let mut byte = [0u8; 1];
                tokio::select! {
                    _ = tokio::time::sleep_until(until.into()) => {
                        lock(&out).open_at_end += 1;
                        return;
                    }
                    // Held until the broker drops it.
                    _ = stream.read(&mut byte) => {}
                }
                let mut o = lock(&out);
                match opened.elapsed() < AT_ONCE {
                    true => o.closed_at_once += 1,
                    false => o.closed_later += 1,
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    lock(&out).clone()
}

/// A car connecting to `addr` every second until `until` (or until `configs` run out), each
/// time with the next of `configs`, a fresh TLS identity: a full handshake, as a car that was
/// never there before.
pub async fn car_connects(
    addr: SocketAddr,
    server_name: &str,
    vin: &Vin,
    configs: Vec<Arc<ClientConfig>>,
    until: Instant,
) -> CarConnects {
    let started = Instant::now();
    let mut attempts = tokio::task::JoinSet::new();
    for (k, config) in (0u32..).zip(configs) {
        let due = started + Duration::from_secs(k.into());
        if due >= until {
            break;
        }
        tokio::time::sleep_until(due.into()).await;
        let (server_name, vin) = (server_name.to_owned(), vin.to_string());
        // Each attempt on its own: a slow one does not delay the next.
        attempts.spawn(async move {
            let (mut writer, _reader, took) =
                rawmqtt::open(config, addr, &server_name, &vin, KEEP_ALIVE, CONNECT_LIMIT)
                    .await?
                    .accepted()?;
            let _ = writer.queue(&Packet::Disconnect);
            let _ = writer.flush().await;
            anyhow::Ok(took)
        });
    }
    let mut out = CarConnects::default();
    let mut latencies = Latencies::default();
    while let Some(done) = attempts.join_next().await {
        out.attempts += 1;
        match done.map_err(anyhow::Error::from).and_then(|r| r) {
            Ok(took) => {
                out.connected += 1;
                latencies.push(took);
            }
            Err(e) => {
                out.first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    out.latency = latencies.summary();
    out
}
