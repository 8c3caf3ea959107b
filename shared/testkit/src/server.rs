//! A server in this process, on the test's tokio runtime: bound (port 0 works), serving, and
//! stopped in order so its data dir can be reopened.

use irec_learn::round::RoundTrainer;
use irec_server::{Server, ServerConfig, ServerError, ServerHandle};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running in-process server.
pub struct Running {
    pub handle: ServerHandle,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServerError>>,
}

/// Binds `config` with `trainer` and serves it on a task.
pub async fn start(config: ServerConfig, trainer: Arc<dyn RoundTrainer>) -> Result<Running, ServerError> {
    let server = Server::bind(config, trainer).await?;
    let handle = server.handle()?;
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(async {
        let _ = rx.await;
    }));
    Ok(Running { handle, stop: Some(tx), task })
}

impl Running {
    pub fn addr(&self) -> SocketAddr {
        self.handle.local_addr
    }

    pub fn cert(&self) -> PathBuf {
        self.handle.cert_path.clone()
    }

    /// Stops the server and waits until it released its data dir.
    pub async fn stop(mut self) -> Result<(), ServerError> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.task.await.map_err(|e| ServerError::Task(e.to_string()))?
    }
}
