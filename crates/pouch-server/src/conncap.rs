//! Caps on concurrent HTTPS connections, in all and from one network
//! address, taken before the TLS handshake: a client that opens connections
//! and sends nothing holds at most its own share, and the server keeps
//! answering everyone else. A connection over either cap is closed at once
//! (the client sees a reset and retries later); a connection's slot is
//! given back when it closes, however it closes.

use axum_server::accept::Accept;
use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How many connections may be open at once.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    pub total: usize,
    pub per_source: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            total: 4096,
            per_source: 256,
        }
    }
}

struct Caps {
    total: Arc<Semaphore>,
    per_source: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
    /// When a refusal was last logged (Unix seconds): one line per 10 s, not
    /// one per refused connection.
    last_warned: std::sync::atomic::AtomicI64,
}

/// An acceptor that admits a TCP connection only within the caps.
#[derive(Clone)]
pub struct CappedAcceptor(Arc<Caps>);

impl CappedAcceptor {
    pub fn new(limits: ConnectionLimits) -> Self {
        CappedAcceptor(Arc::new(Caps {
            total: Arc::new(Semaphore::new(limits.total.max(1))),
            per_source: limits.per_source.max(1),
            open: Mutex::new(HashMap::new()),
            last_warned: Default::default(),
        }))
    }

    fn admit(&self, stream: TcpStream) -> io::Result<Capped> {
        let source = stream.peer_addr()?.ip();
        let refuse = |why: &str| {
            let now = crate::now();
            let last = self
                .0
                .last_warned
                .load(std::sync::atomic::Ordering::Relaxed);
            if now - last >= 10 {
                self.0
                    .last_warned
                    .store(now, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(%source, "connection refused: {why}");
            }
            io::Error::other(why.to_string())
        };
        let permit = self
            .0
            .total
            .clone()
            .try_acquire_owned()
            .map_err(|_| refuse("the server's connection cap is reached"))?;
        {
            let mut open = self.0.open.lock().expect("not poisoned");
            let n = open.entry(source).or_insert(0);
            if *n >= self.0.per_source {
                return Err(refuse("too many connections from this address"));
            }
            *n += 1;
        }
        Ok(Capped {
            inner: stream,
            _slot: Slot {
                caps: self.0.clone(),
                source,
                _permit: permit,
            },
        })
    }
}

impl<S> Accept<TcpStream, S> for CappedAcceptor {
    type Stream = Capped;
    type Service = S;
    type Future = std::future::Ready<io::Result<(Capped, S)>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        std::future::ready(self.admit(stream).map(|c| (c, service)))
    }
}

/// A connection's place under the caps, given back on drop.
struct Slot {
    caps: Arc<Caps>,
    source: IpAddr,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.caps.open.lock().expect("not poisoned");
        if let Some(n) = open.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.source);
            }
        }
    }
}

/// A TCP stream that holds its slot for as long as it lives.
pub struct Capped {
    inner: TcpStream,
    _slot: Slot,
}

impl AsyncRead for Capped {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Capped {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
