//! The controller: keeps compiled ConfigMaps/Secrets in step with LogRoutes.

use std::net::SocketAddr;

/// `logroute controller` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct ControllerArgs {
    /// The operator's namespace: compiled objects live here, and only LogRoutes here may
    /// select other namespaces or host containers.
    #[arg(long, env = "LOGROUTE_NAMESPACE", default_value = "logroute-system")]
    pub namespace: String,
    /// Address for /metrics, /healthz and /readyz.
    #[arg(long, env = "LOGROUTE_METRICS_ADDR", default_value = "0.0.0.0:9090")]
    pub metrics_addr: SocketAddr,
}

pub async fn run(args: ControllerArgs) -> anyhow::Result<()> {
    anyhow::bail!("controller not built yet: {args:?}")
}
