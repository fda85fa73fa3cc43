//! `hookgate-loadtest balance`: a round-robin TCP load balancer on loopback, standing in
//! for the one in front of several hookgate replicas. Each new connection goes to the
//! next backend in turn; a backend that refuses the connection (a replica that is down)
//! is skipped, as a load balancer's health check would take it out of rotation.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

/// A backend that does not accept within this long is skipped.
const CONNECT: Duration = Duration::from_secs(2);

/// Serves `listener` until the process ends.
pub async fn serve(listener: TcpListener, backends: Vec<String>) -> anyhow::Result<()> {
    anyhow::ensure!(!backends.is_empty(), "at least one --backend is needed");
    let backends: Arc<[String]> = backends.into();
    let turn = Arc::new(AtomicUsize::new(0));
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            Err(e) => {
                // Out of file descriptors, say: wait, and go on balancing.
                eprintln!("balance: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (backends, turn) = (backends.clone(), turn.clone());
        tokio::spawn(async move {
            let first = turn.fetch_add(1, Ordering::Relaxed);
            for i in 0..backends.len() {
                let backend = &backends[(first + i) % backends.len()];
                let connect = tokio::time::timeout(CONNECT, TcpStream::connect(backend));
                if let Ok(Ok(server)) = connect.await {
                    relay(client, server).await;
                    return;
                }
            }
            // Every backend refused: the client sees its connection closed.
        });
    }
}

async fn relay(mut client: TcpStream, mut server: TcpStream) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}
