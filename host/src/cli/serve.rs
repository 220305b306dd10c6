//! `smartmart serve`: configuration, the engine, the HTTP server, signals.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::app::{Dataset, Engine};
use crate::config::{ServeConfig, ServeSettings};
use crate::http::Credentials;
use crate::http::{AppState, serve_with};

/// `--dev` credentials, kept in the data dir (mode 0600) so that a restart
/// keeps them and `smartmart token` can sign customer tokens with them.
#[derive(Serialize, Deserialize)]
struct DevCredentials {
    channel_keys: std::collections::BTreeMap<String, String>,
    admin_key: String,
    identity_secret: String,
}

pub fn dev_credentials_path(data_dir: &Path) -> PathBuf {
    data_dir.join("dev-credentials.json")
}

fn load_or_create_dev_credentials(data_dir: &Path, fresh: Credentials) -> anyhow::Result<Credentials> {
    let path = dev_credentials_path(data_dir);
    if let Ok(text) = std::fs::read_to_string(&path) {
        let dev: DevCredentials = serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))?;
        return Ok(Credentials {
            channel_keys: dev.channel_keys,
            admin_key: dev.admin_key,
            identity_secret: dev.identity_secret,
        });
    }
    std::fs::create_dir_all(data_dir)?;
    let dev = DevCredentials {
        channel_keys: fresh.channel_keys.clone(),
        admin_key: fresh.admin_key.clone(),
        identity_secret: fresh.identity_secret.clone(),
    };
    let text = serde_json::to_string_pretty(&dev)?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    std::io::Write::write_all(&mut options.open(&path)?, text.as_bytes())?;
    Ok(fresh)
}

/// Reads the identity secret for `smartmart token`: the environment
/// (`SMARTMART_IDENTITY_SECRET` or `…_FILE`), else the `--dev` credentials of `data_dir`.
pub fn identity_secret_for_tokens(data_dir: &Path) -> anyhow::Result<String> {
    if let Some(secret) = crate::config::secret_from_file("SMARTMART_IDENTITY_SECRET", &crate::config::process_env)? {
        return Ok(secret);
    }
    if let Ok(secret) = std::env::var("SMARTMART_IDENTITY_SECRET") {
        return Ok(secret);
    }
    let path = dev_credentials_path(data_dir);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!("no SMARTMART_IDENTITY_SECRET and no {} (start `serve --dev` first)", path.display())
    })?;
    Ok(serde_json::from_str::<DevCredentials>(&text)?.identity_secret)
}

/// The settings `serve` runs with; with `--dev` and no configured
/// credentials, the ones kept in the data dir (created on the first start),
/// with every key derived from them. Returns whether they are `--dev` ones.
pub fn resolve_settings(config: ServeConfig, dev: bool) -> anyhow::Result<(ServeSettings, bool)> {
    let (mut settings, generated) = ServeSettings::resolve(config, dev)?;
    if generated {
        let kept = load_or_create_dev_credentials(&settings.engine.0.data_dir, settings.credentials.clone())?;
        settings.use_credentials(kept);
    }
    Ok((settings, generated))
}

/// Runs the service until SIGTERM or SIGINT.
pub async fn run(config: ServeConfig, dev: bool, demo_data: Option<PathBuf>) -> anyhow::Result<()> {
    let (settings, generated) = resolve_settings(config, dev)?;
    let engine = Engine::start(settings.engine.0.clone()).await?;
    if let Some(dataset) = demo_data
        && !engine.store().has_customers().await?
    {
        Dataset::read(&dataset)?.load_into(engine.store()).await?;
        tracing::info!(dataset = %dataset.display(), "loaded the demo data set");
    }
    let listener = TcpListener::bind(settings.listen).await.with_context(|| format!("binding {}", settings.listen))?;
    let address = listener.local_addr()?;
    if generated {
        // Printed once on the terminal, never logged.
        println!(
            "--dev: generated credentials, kept in {}",
            dev_credentials_path(&settings.engine.0.data_dir).display()
        );
        for (channel, key) in &settings.credentials.channel_keys {
            println!("  channel {channel:<8} Authorization: Bearer {key}");
        }
        println!("  admin            Authorization: Bearer {}", settings.credentials.admin_key);
        println!(
            "  customer tokens: smartmart token <customer id> --data-dir {}",
            settings.engine.0.data_dir.display()
        );
    }
    println!("SmartMart listening on http://{address}");
    let engine = Arc::new(engine);
    let state = AppState::new(
        engine.clone(),
        settings.credentials.clone(),
        settings.body_limit_bytes,
        settings.request_timeout,
    );
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    serve_with(listener, state, shutdown, settings.shutdown_grace, settings.connection_limits).await?;
    tracing::info!("stopped accepting; shutting the engine down");
    match Arc::try_unwrap(engine) {
        Ok(engine) => engine.shutdown().await,
        Err(_) => tracing::warn!("requests still hold the engine; its workers stop with the process"),
    }
    Ok(())
}

async fn cancel_on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
    tracing::info!("shutdown signal received");
    shutdown.cancel();
}
