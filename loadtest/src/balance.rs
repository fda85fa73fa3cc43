//! `hookgate-loadtest balance`: a round-robin TCP load balancer on loopback, standing in
//! for the one in front of several hookgate replicas. Each new connection goes to the
//! next backend in turn; a backend that refuses the connection (a replica that is down)
//! is skipped, as a load balancer's health check would take it out of rotation.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};

/// Serves `listener` until the process ends.
pub async fn serve(listener: TcpListener, backends: Vec<String>) -> anyhow::Result<()> {
    anyhow::ensure!(!backends.is_empty(), "at least one --backend is needed");
    let backends: Arc<[String]> = backends.into();
    let turn = Arc::new(AtomicUsize::new(0));
    loop {
        let (client, _) = listener.accept().await?;
        let (backends, turn) = (backends.clone(), turn.clone());
        tokio::spawn(async move {
            let first = turn.fetch_add(1, Ordering::Relaxed);
            for i in 0..backends.len() {
                let backend = &backends[(first + i) % backends.len()];
                if let Ok(server) = TcpStream::connect(backend).await {
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
