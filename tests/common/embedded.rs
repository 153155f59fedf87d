//! Our own client (the library's `Syncer`) against the embedded SFTP server,
//! for fault injection.

use sftp_mirror::config::{Secret, Settings};
use sftp_mirror::sync::Syncer;
use sftp_mirror::testkit::{client_settings, generate_client_key, Faults, ServerOptions, TestServer};
use std::path::PathBuf;
use std::sync::Arc;

pub struct Embedded {
    pub server: TestServer,
    pub dir: tempfile::TempDir,
    pub settings: Settings,
}

impl Embedded {
    pub async fn start() -> Embedded {
        let dir = tempfile::tempdir().unwrap();
        let (remote, state) = (dir.path().join("remote"), dir.path().join("state"));
        std::fs::create_dir_all(&remote).unwrap();
        let (key, public) = generate_client_key(&state).unwrap();
        let mut opts = ServerOptions::new(&remote, "tester");
        opts.authorized_keys = vec![public];
        let server = TestServer::start(opts).await.unwrap();
        let settings =
            client_settings(&server, "tester", &key, &state, &dir.path().join("mirror"), Secret::new("s")).unwrap();
        Embedded { server, dir, settings }
    }

    pub fn remote(&self) -> PathBuf {
        self.dir.path().join("remote")
    }

    pub fn mirror(&self) -> PathBuf {
        self.dir.path().join("mirror")
    }

    pub fn faults(&self) -> Faults {
        self.server.faults()
    }

    pub fn syncer(&self) -> Arc<Syncer> {
        Arc::new(sftp_mirror::daemon::syncer(&self.settings, sftp_mirror::daemon::MirrorAccess::Write).unwrap())
    }

    /// A config file for the `sftp-mirror` binary against this server.
    pub fn config_file(&self, timeout: &str) -> PathBuf {
        let state = self.dir.path().join("state");
        let target = super::Target {
            port: self.server.addr().port(),
            user: "tester",
            key: &state.join("id_ed25519"),
            known_hosts: &state.join("known_hosts"),
            remote_root: "/",
            timeout,
        };
        super::write_config(self.dir.path(), &target, &self.mirror(), &state.join("journal.db"))
    }

    pub fn put(&self, rel: &str, data: &[u8]) {
        let p = self.remote().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
}

/// Deterministic, incompressible-looking bytes.
pub fn pattern(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
