//! `cargo xtask setup`: installs exactly what building and testing podtrace needs, and is fast
//! (seconds) when everything is already there.
//!
//! * the pinned toolchain and rust-src come from rust-toolchain.toml (rustup installs them when
//!   cargo starts; we only add a missing component);
//! * bpf-linker built against this toolchain's own LLVM (skipped when the installed one already
//!   links this toolchain's libLLVM);
//! * the Debian packages the lab and tests use;
//! * the Python packages the tests use as independent references (the Community ID spec's
//!   reference implementation).
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

/// Tool binary → Debian package.
const PACKAGES: [(&str, &str); 12] = [
    ("ip", "iproute2"),
    ("iptables", "iptables"),
    ("ip6tables", "iptables"),
    // The lab's iptables-legacy nodes (`lab up --iptables legacy`).
    ("iptables-legacy-restore", "iptables"),
    // kube-proxy's nftables mode and the VPC CNI's `ip aws-cni` table in the lab.
    ("nft", "nftables"),
    ("tshark", "tshark"),
    ("conntrack", "conntrack"),
    ("bpftool", "bpftool"),
    ("iperf3", "iperf3"),
    ("tcpdump", "tcpdump"),
    // `kubectl plugin list` finds kubectl-podtrace (tests/tests/cluster.rs).
    ("kubectl", "kubectl"),
    // The live view's test drives it in a real pseudo-terminal.
    ("tmux", "tmux"),
];

const BPF_LINKER_VERSION: &str = "0.13.0";

/// Python module → PyPI requirement.
const PYTHON_PACKAGES: [(&str, &str); 1] = [("communityid", "communityid==1.5.0")];

pub fn run(packages: bool) -> Result<()> {
    if packages {
        apt_packages()?;
        python_packages()?;
    }
    rust_src()?;
    bpf_linker()?;
    Ok(())
}

fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|p| p.join(bin)).find(|p| p.is_file()))
}

fn python_packages() -> Result<()> {
    for (module, requirement) in PYTHON_PACKAGES {
        let present = Command::new("python3").args(["-c", &format!("import {module}")]).output();
        if present.is_ok_and(|o| o.status.success()) {
            continue;
        }
        println!("setup: installing {requirement} (pip)");
        let status = Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", requirement])
            .status()
            .context("running pip (python3 -m pip)")?;
        if !status.success() {
            bail!("pip install {requirement} failed");
        }
    }
    Ok(())
}

fn apt_packages() -> Result<()> {
    let mut missing: Vec<&str> =
        PACKAGES.iter().filter(|(bin, _)| which(bin).is_none()).map(|(_, pkg)| *pkg).collect();
    missing.sort_unstable();
    missing.dedup();
    if missing.is_empty() {
        println!("setup: system packages present");
        return Ok(());
    }
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "missing packages {} and not root: run `sudo apt-get install -y {}`",
            missing.join(" "),
            missing.join(" ")
        );
    }
    println!("setup: installing {}", missing.join(" "));
    let status = Command::new("apt-get").args(["update", "-qq"]).status().context("apt-get update")?;
    if !status.success() {
        bail!("apt-get update failed");
    }
    let status = Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("apt-get install")?;
    if !status.success() {
        bail!("apt-get install {} failed", missing.join(" "));
    }
    Ok(())
}

fn rustc_output(args: &[&str]) -> Result<String> {
    let out = Command::new("rustc").args(args).output().context("running rustc")?;
    if !out.status.success() {
        bail!("rustc {} failed", args.join(" "));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn rust_src() -> Result<()> {
    let sysroot = PathBuf::from(rustc_output(&["--print", "sysroot"])?);
    if sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        return Ok(());
    }
    println!("setup: adding rust-src");
    let status = Command::new("rustup").args(["component", "add", "rust-src"]).status()?;
    if !status.success() {
        bail!("rustup component add rust-src failed");
    }
    Ok(())
}

/// The toolchain's own libLLVM shared object (e.g. `libLLVM.so.23.1-rust-1.99.1-stable`).
fn toolchain_llvm(sysroot: &Path) -> Result<PathBuf> {
    std::fs::read_dir(sysroot.join("lib"))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libLLVM.so.")))
        .with_context(|| format!("no libLLVM.so.* in {}/lib", sysroot.display()))
}

fn bpf_linker() -> Result<()> {
    let sysroot = PathBuf::from(rustc_output(&["--print", "sysroot"])?);
    let llvm = toolchain_llvm(&sysroot)?;
    let soname = llvm.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
    let major = rustc_output(&["-vV"])?
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .map(str::to_string)
        .context("rustc -vV prints no LLVM version")?;
    // The installed bpf-linker matches when it links exactly this toolchain's libLLVM.
    if let Some(installed) = which("bpf-linker") {
        let bytes = std::fs::read(&installed).unwrap_or_default();
        if bytes.windows(soname.len()).any(|w| w == soname.as_bytes()) {
            println!("setup: bpf-linker matches LLVM {major} ({soname})");
            return Ok(());
        }
        println!("setup: {} links another LLVM; rebuilding", installed.display());
    }
    let prefix = std::env::temp_dir().join(format!("podtrace-llvm-{major}"));
    std::fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&llvm, &link)?;
    println!("setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM {major} (about 80 s)");
    let status = Command::new("cargo")
        .args(["install", "bpf-linker", "--locked", "--force", "--version", BPF_LINKER_VERSION])
        .args(["--no-default-features", "--features", &format!("llvm-{major}")])
        .env("LLVM_PREFIX", &prefix)
        .status()
        .context("cargo install bpf-linker")?;
    if !status.success() {
        bail!("building bpf-linker failed");
    }
    Ok(())
}
