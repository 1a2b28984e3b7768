//! A small in-memory Kubernetes API server for tests: real list + watch over plain HTTP
//! on a loopback port, so that the real kube client (and the agent and controller as
//! child processes, through a kubeconfig) exercise their initial-list, watch, re-watch
//! and re-list paths. No API server can be installed here, and feeding a reflector's
//! store directly skips exactly the paths where cluster-mode bugs live.
//!
//! What it serves: pods, configmaps, secrets, namespaces, nodes, core and events.k8s.io
//! events, leases and logroutes (see `store::RESOURCES`); get, list (label and field
//! selectors; every item in one page, no `continue` token — legal for a server), watch
//! (from a resourceVersion, with bookmarks, 410 Expired once `compact`ed), create,
//! replace (409 on a stale resourceVersion), delete (finalizers honoured), the `/status`
//! subresource and PATCH as server-side apply (single-manager model, see `patch`), merge
//! patch, JSON patch and strategic merge patch (treated as a merge patch).
//!
//! It runs on its own thread with its own tokio runtime, so synchronous tests and
//! `#[tokio::test]`s can both use it; dropping the handle stops it.

mod patch;
mod select;
mod serve;
mod store;
mod watch;

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use store::{Part, Resource, Store};

/// State shared by the server thread and the test's handle.
struct Shared {
    store: Mutex<Store>,
    /// Ticks on every write and control action: open watches look at the store again.
    tick: tokio::sync::watch::Sender<u64>,
    open_watches: AtomicUsize,
}

struct OpenWatch<'a>(&'a AtomicUsize);

impl Drop for OpenWatch<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Shared {
    fn write<R>(&self, f: impl FnOnce(&mut Store) -> R) -> R {
        let out = f(&mut self.store.lock().expect("store"));
        self.tick.send_modify(|n| *n += 1);
        out
    }

    /// Return once lists are not held (see [`ApiServer::hold_lists`]).
    async fn lists_released(&self) {
        let mut ticks = self.tick.subscribe();
        while self.store.lock().expect("store").hold_lists {
            if ticks.changed().await.is_err() {
                return;
            }
        }
    }

    fn open_watch(&self) -> OpenWatch<'_> {
        self.open_watches.fetch_add(1, Ordering::SeqCst);
        OpenWatch(&self.open_watches)
    }
}

pub struct ApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
    thread: Option<JoinHandle<()>>,
}

fn resource(api_version: &str, kind: &str) -> &'static Resource {
    Resource::by_api_version(api_version, kind)
        .unwrap_or_else(|| panic!("the test API server does not serve {api_version} {kind}"))
}

impl ApiServer {
    /// Start on a free loopback port.
    pub fn start() -> ApiServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let addr = listener.local_addr().expect("local address");
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::default()),
            tick: tokio::sync::watch::Sender::new(0),
            open_watches: AtomicUsize::new(0),
        });
        let stop = CancellationToken::new();
        let (s, st) = (shared.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("test-apiserver".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("API server runtime");
                rt.block_on(serve::serve(listener, s, st));
            })
            .expect("spawn the API server thread");
        ApiServer {
            addr,
            shared,
            stop,
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig whose current context points at this server (no TLS, no auth).
    pub fn write_kubeconfig(&self, path: &Path) {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n\
             contexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n    namespace: default\n\
             current-context: test\nusers:\n- name: test\n  user: {{}}\n",
            self.url()
        );
        std::fs::write(path, text).expect("write kubeconfig");
    }

    /// A kube client for this server; call it inside a tokio runtime.
    pub async fn client(&self) -> kube::Client {
        let config = kube::Config::new(self.url().parse().expect("server URL"));
        kube::Client::try_from(config).expect("kube client")
    }

    /// Create or replace `obj` as `kubectl apply` would (the whole object, status
    /// included; server-owned metadata stays the server's). Returns it as stored.
    pub fn apply(&self, obj: Value) -> Value {
        let r = resource(
            obj["apiVersion"].as_str().unwrap_or_default(),
            obj["kind"].as_str().unwrap_or_default(),
        );
        let ns = if r.namespaced {
            obj["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_string()
        } else {
            String::new()
        };
        let name = obj["metadata"]["name"]
            .as_str()
            .expect("object has metadata.name")
            .to_string();
        self.shared
            .write(|s| match s.get(r, &ns, &name) {
                Some(_) => s.update(r, &ns, &name, obj, Part::Whole),
                None => s.create(r, &ns, obj, Part::Whole),
            })
            .unwrap_or_else(|e| panic!("apply {}/{name}: {}", r.plural, e.message))
    }

    /// Delete as a client would (finalizers honoured); the object as it now stands, or
    /// `None` when there was none.
    pub fn delete(&self, api_version: &str, kind: &str, ns: &str, name: &str) -> Option<Value> {
        let r = resource(api_version, kind);
        let ns = if r.namespaced { ns } else { "" };
        self.shared.write(|s| s.delete(r, ns, name)).ok()
    }

    pub fn get(&self, api_version: &str, kind: &str, ns: &str, name: &str) -> Option<Value> {
        let r = resource(api_version, kind);
        let ns = if r.namespaced { ns } else { "" };
        self.shared
            .store
            .lock()
            .expect("store")
            .get(r, ns, name)
            .cloned()
    }

    /// Every object of a kind, in `ns` or in all namespaces.
    pub fn list(&self, api_version: &str, kind: &str, ns: Option<&str>) -> Vec<Value> {
        let r = resource(api_version, kind);
        self.shared
            .store
            .lock()
            .expect("store")
            .list(r, ns, &select::Selector::default())
    }

    /// End every open watch connection abruptly (no final chunk): clients must re-watch.
    pub fn drop_watches(&self) {
        self.shared.write(|s| s.drop_epoch += 1);
    }

    /// Forget the change history: every watch from an earlier resourceVersion, the open
    /// ones included, gets an ERROR event with 410 Expired, which makes kube's watcher
    /// re-list. (A real API server ends open watches this way when its watch cache falls
    /// behind; a compaction alone only hits new watches. Here both are one control.)
    pub fn compact(&self) {
        self.shared.write(Store::compact);
    }

    /// While paused, open watches send nothing (their clients see a silent stream);
    /// unpausing sends what they missed.
    pub fn pause_watches(&self, paused: bool) {
        self.shared.write(|s| s.paused = paused);
    }

    /// While held, list requests get no answer (a slow or overloaded API server): a
    /// client that starts then cannot have synced. Releasing answers them.
    pub fn hold_lists(&self, held: bool) {
        self.shared.write(|s| s.hold_lists = held);
    }

    /// Method, path and query of every request so far, decoded (e.g.
    /// `GET /api/v1/pods?fieldSelector=spec.nodeName=node-1&watch=true&...`).
    pub fn requests(&self) -> Vec<String> {
        self.shared.store.lock().expect("store").requests.clone()
    }

    /// Watch connections open now.
    pub fn open_watches(&self) -> usize {
        self.shared.open_watches.load(Ordering::SeqCst)
    }

    /// The latest resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.store.lock().expect("store").rv
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
