//! `sftp-mirror demo` exits 0, and the trees it leaves behind are equal by our own check.

use crate::common::*;

#[test]
fn the_demo_succeeds_and_its_mirror_really_equals_its_remote() {
    let out = std::process::Command::new(bin()).arg("demo").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    let base = text
        .lines()
        .find_map(|l| l.strip_prefix("Folders kept for inspection: "))
        .unwrap_or_else(|| panic!("no folder line in:\n{text}"));
    let base = std::path::Path::new(base.trim());
    let (remote, mirror) = (tree(&base.join("remote")), tree(&base.join("mirror")));
    assert!(remote.len() >= 8, "{remote:?}");
    assert_eq!(mirror, remote);
    for step in ["HTTP 401", "HTTP 204", "Verdict: mirror equals remote: yes"] {
        assert!(text.contains(step), "missing {step:?} in:\n{text}");
    }
    std::fs::remove_dir_all(base).unwrap();
}
