//! `account-gate demo`: the Commerce emulator and a gateway in front of it, on loopback, with a
//! walkthrough a person can paste into a shell.

use std::future::Future;
use std::net::SocketAddr;

use tokio::net::TcpListener;

use crate::config::{self, Config};
use crate::emulator::{Emulator, EmulatorOptions};
use crate::Server;

/// The demo's default configuration, shipped as `config/demo.toml`.
const DEMO_TOML: &str = include_str!("../config/demo.toml");

/// Where the demo's three listeners go. A taken port falls back to a free one.
#[derive(Debug, Clone, Copy)]
pub struct DemoAddrs {
    pub gateway: SocketAddr,
    pub admin: SocketAddr,
    pub emulator: SocketAddr,
}

/// Why the demo could not start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error("the built-in demo configuration is invalid: {0}")]
    Config(#[from] config::ConfigErrors),
    #[error(transparent)]
    Start(#[from] crate::StartError),
}

/// Runs the demo until `shutdown` completes.
pub async fn run(addrs: DemoAddrs, shutdown: impl Future<Output = ()>) -> Result<(), DemoError> {
    let loaded = config::from_toml_str(DEMO_TOML, &[])?;
    let mut config: Config = loaded.config;
    let _logs = crate::logging::init(&config.log, None);

    let emulator_listener = bind_or_any(addrs.emulator).await?;
    let emulator_addr = emulator_listener
        .local_addr()
        .map_err(|e| DemoError::Bind(addrs.emulator, e))?;
    let options = EmulatorOptions::default();
    let walkthrough_options = options.clone();
    let (stop_emulator, emulator_stopped) = tokio::sync::oneshot::channel::<()>();
    let emulator = tokio::spawn(Emulator::serve(emulator_listener, options, async {
        let _ = emulator_stopped.await;
    }));

    config.upstream.url = format!("http://{emulator_addr}")
        .parse()
        .map_err(|_| DemoError::Bind(emulator_addr, std::io::ErrorKind::InvalidInput.into()))?;
    config.server.listen = free_or_any(addrs.gateway).await;
    config.server.admin_listen = free_or_any(addrs.admin).await;
    let server = Server::bind(config).await?;
    println!(
        "{}",
        walkthrough(
            server.local_addr(),
            server.admin_addr(),
            emulator_addr,
            &walkthrough_options
        )
    );
    server.run(shutdown).await;
    let _ = stop_emulator.send(());
    let _ = emulator.await;
    Ok(())
}

/// Binds `addr`, or a free port on the same IP when `addr` is taken.
async fn bind_or_any(addr: SocketAddr) -> Result<TcpListener, DemoError> {
    match TcpListener::bind(addr).await {
        Ok(listener) => Ok(listener),
        Err(_) => TcpListener::bind(SocketAddr::new(addr.ip(), 0))
            .await
            .map_err(|e| DemoError::Bind(addr, e)),
    }
}

/// `addr` if it can be bound now, else the same IP with port 0 (the OS picks).
async fn free_or_any(addr: SocketAddr) -> SocketAddr {
    match TcpListener::bind(addr).await {
        Ok(_) => addr,
        Err(_) => SocketAddr::new(addr.ip(), 0),
    }
}

/// The text printed at start: URLs and copy-paste commands (bash, curl, python3).
pub fn walkthrough(
    gateway: SocketAddr,
    admin: SocketAddr,
    emulator: SocketAddr,
    options: &EmulatorOptions,
) -> String {
    let client_id = &options.client_id;
    let profile = &options.password_profile_id;
    format!(
        r#"account-gate demo is running.
  gateway (storefront traffic)  http://{gateway}
  admin (metrics, health)       http://{admin}
  Commerce emulator (upstream)  http://{emulator}

Try it in another shell (bash; needs curl and python3):

# --- walkthrough ---
GW=http://{gateway}; ADMIN=http://{admin}
json() {{ python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }}
signup() {{ curl -s $GW/v2/account-members/tokens -H "Authorization: Bearer $ACCESS" -H 'Content-Type: application/json' -d '{{"data":{{"type":"account_management_authentication_token","authentication_mechanism":"self_signup","password_profile_id":"{profile}","username":"'$1'","password":"correct horse battery","name":"Demo Shopper","email":"'$1'"}}}}'; }}
# 1. A storefront access token (implicit grant), through the gateway:
ACCESS=$(curl -s $GW/oauth/access_token -d grant_type=implicit -d client_id={client_id} | json 'd["access_token"]')
# 2. Self sign-up: the gateway checks the request, forwards it and learns the issued token.
SIGNUP=$(signup ann-$RANDOM@example.com)
TOKEN=$(echo "$SIGNUP" | json 'd["data"][0]["token"]'); ACCOUNT=$(echo "$SIGNUP" | json 'd["data"][0]["account_id"]')
echo "account $ACCOUNT"
# 3. Read the account with its token (200):
curl -s $GW/v2/accounts/$ACCOUNT -H "Authorization: Bearer $ACCESS" -H "EP-Account-Management-Authentication-Token: $TOKEN"; echo
# 4. A tampered token is refused by the gateway (401), never reaching the upstream:
BAD="${{TOKEN%.*}}.$(echo "${{TOKEN##*.}}" | tr 'A-Za-z' 'B-ZAb-za')"
curl -s -w ' %{{http_code}}\n' $GW/v2/accounts/$ACCOUNT -H "Authorization: Bearer $ACCESS" -H "EP-Account-Management-Authentication-Token: $BAD"
# 5. Another shopper's account with this token: 403, the classic IDOR stopped.
OTHER=$(signup bob-$RANDOM@example.com | json 'd["data"][0]["account_id"]')
curl -s -w ' %{{http_code}}\n' $GW/v2/accounts/$OTHER -H "Authorization: Bearer $ACCESS" -H "EP-Account-Management-Authentication-Token: $TOKEN"
# 6. Log out (the Commerce API has no logout; the gateway does), then the token is dead (401):
curl -s -o /dev/null -w '%{{http_code}}\n' -X DELETE $GW/v2/account-members/tokens -H "EP-Account-Management-Authentication-Token: $TOKEN"
curl -s -w ' %{{http_code}}\n' $GW/v2/accounts/$ACCOUNT -H "Authorization: Bearer $ACCESS" -H "EP-Account-Management-Authentication-Token: $TOKEN"
# 7. What Prometheus sees:
curl -s $ADMIN/metrics | grep -E '^account_gate_(requests|token_validations|tokens_issued|tokens_revoked)' | grep -v ' 0$'
# --- end ---

Stop with Ctrl-C."#
    )
}
