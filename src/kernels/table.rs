//! The kernel table: which kernel runs each operation on this CPU, chosen once per process
//! (the layout of tract-linalg's `Ops`). `portable/` holds the level every CPU runs; each
//! architecture's folder (`x86_64/`, `aarch64/`, `arm/`) lists the levels above it,
//! lowest first, each the one below with some entries replaced and a test of the CPU's
//! features. The levels run are the portable one and those of the list up to the first
//! this CPU lacks; the best runs unless `EDGE_KERNELS=<level>` names a lower one (tests,
//! benchmarks), and a level the CPU cannot run is refused. Adding a kernel for a new CPU
//! touches its folder and its level.

use std::sync::OnceLock;

use super::depthwise::DepthwiseKernel;
use super::f32_weights::F32Kernel;
use super::pool::PoolKernel;
use super::qgemm;
use super::quantize::QuantizeKernel;

/// The environment variable that forces a level.
pub const OVERRIDE: &str = "EDGE_KERNELS";

/// One level's kernels: what runs each operation.
#[derive(Debug, Clone, Copy)]
pub struct Kernels {
    /// The level's name, as `EDGE_KERNELS` takes it.
    pub level: &'static str,
    /// f32 products (convolutions, dense layers).
    pub f32: &'static F32Kernel,
    /// int8 products.
    pub int8: &'static qgemm::Kernel,
    /// Activation quantization (f32 -> u8, and the maxima its scales come from).
    pub quantize: &'static QuantizeKernel,
    /// 2 x 2 max pooling.
    pub pool: &'static PoolKernel,
    /// Depthwise convolutions (EfficientNet-Lite0's blocks).
    pub depthwise: &'static DepthwiseKernel,
}

impl Kernels {
    /// `(operation, kernel)` for every entry, in the table's order: what `classify bench`,
    /// `/metrics` and the README list.
    pub fn entries(&self) -> [(&'static str, &'static str); 5] {
        [
            ("f32", self.f32.name),
            ("int8", self.int8.name),
            ("quantize", self.quantize.name),
            ("pool", self.pool.name),
            ("depthwise", self.depthwise.name),
        ]
    }
}

/// A level of an architecture's list, and when this CPU runs it.
pub struct Level {
    pub kernels: Kernels,
    /// The CPUs that run it, for people (the README's kernel list).
    pub cpu: &'static str,
    /// Whether this CPU runs it (given that it runs the levels below).
    pub runs: fn() -> bool,
}

/// The levels above the portable one that this architecture's kernels make up.
pub fn levels_of_this_architecture() -> &'static [Level] {
    #[cfg(target_arch = "x86_64")]
    return super::x86_64::LEVELS;
    #[cfg(target_arch = "aarch64")]
    return super::aarch64::LEVELS;
    #[cfg(target_arch = "arm")]
    return super::arm::LEVELS;
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64", target_arch = "arm")))]
    return &[];
}

/// Why the table could not be chosen.
#[derive(Debug, Clone, thiserror::Error)]
pub enum KernelsError {
    #[error("{OVERRIDE}={requested}: this CPU runs the levels {runnable}")]
    NotRunnable { requested: String, runnable: String },
}

/// Every level this CPU can run, lowest (`portable`) first.
pub fn runnable() -> &'static [Kernels] {
    static RUNNABLE: OnceLock<Vec<Kernels>> = OnceLock::new();
    RUNNABLE.get_or_init(|| {
        let above = levels_of_this_architecture()
            .iter()
            .take_while(|level| (level.runs)())
            .map(|level| level.kernels);
        std::iter::once(super::portable::KERNELS)
            .chain(above)
            .collect()
    })
}

/// The table in use: the best level, or the one `EDGE_KERNELS` names. The first call
/// decides for the whole process and logs the choice.
pub fn select() -> Result<&'static Kernels, KernelsError> {
    static CHOSEN: OnceLock<Result<&'static Kernels, KernelsError>> = OnceLock::new();
    CHOSEN
        .get_or_init(|| {
            let chosen = choose(std::env::var(OVERRIDE).ok().as_deref())?;
            tracing::info!(
                level = chosen.level,
                f32 = chosen.f32.name,
                int8 = chosen.int8.name,
                quantize = chosen.quantize.name,
                pool = chosen.pool.name,
                depthwise = chosen.depthwise.name,
                "kernels"
            );
            Ok(chosen)
        })
        .clone()
}

/// The level named `requested` (the best when `None` or empty), if this CPU runs it.
pub fn choose(requested: Option<&str>) -> Result<&'static Kernels, KernelsError> {
    let levels = runnable();
    let best = levels
        .last()
        .expect("the portable level is always runnable");
    match requested.map(str::trim) {
        None | Some("") => Ok(best),
        Some(name) => levels
            .iter()
            .find(|kernels| kernels.level == name)
            .ok_or_else(|| KernelsError::NotRunnable {
                requested: name.to_string(),
                runnable: levels
                    .iter()
                    .map(|kernels| kernels.level)
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
    }
}

/// The table in use ([`select`]). The binary checks `select` at start-up and refuses a
/// bad `EDGE_KERNELS` there with a message; a library user who set one gets the panic.
pub fn table() -> &'static Kernels {
    match select() {
        Ok(kernels) => kernels,
        Err(error) => panic!("{error}"),
    }
}

/// Every distinct kernel of one operation over the levels this CPU runs, lowest first:
/// what the kernel tests run against their portable reference. Writes the names to
/// stderr past the test harness's capture, so a test run shows which variants ran.
#[cfg(test)]
pub(crate) fn variants<T>(
    operation: &str,
    entry: impl Fn(&Kernels) -> &'static T,
    name: impl Fn(&T) -> &'static str,
) -> Vec<&'static T> {
    use std::io::Write;
    let mut variants: Vec<&'static T> = Vec::new();
    for kernels in runnable() {
        let kernel = entry(kernels);
        if !variants.iter().any(|seen| name(seen) == name(kernel)) {
            variants.push(kernel);
        }
    }
    let names: Vec<&str> = variants.iter().map(|kernel| name(kernel)).collect();
    let _ = writeln!(
        std::io::stderr(),
        "{operation} kernels tested: {}",
        names.join(", ")
    );
    variants
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names in a comma-separated environment variable.
    fn listed(var: &str) -> Vec<String> {
        std::env::var(var)
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|name| !name.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// The levels the CPU's own report says it must offer (x86: the flags of
    /// /proc/cpuinfo, read apart from the detection under test), plus what
    /// `EDGE_EXPECT_KERNELS` names (the ARM runs under qemu, whose /proc/cpuinfo is the
    /// host's); `EDGE_ABSENT_KERNELS` names what it must not. A detection that silently
    /// fell back would otherwise test the portable kernels alone.
    #[test]
    fn the_cpu_offers_the_levels_it_should() {
        let levels: Vec<&str> = runnable().iter().map(|k| k.level).collect();
        assert_eq!(levels[0], "portable");
        let mut expected = listed("EDGE_EXPECT_KERNELS");
        if cfg!(target_arch = "x86_64") {
            expected.extend(x86_levels_from_cpuinfo());
        }
        if cfg!(target_arch = "aarch64") {
            expected.push("neon".into());
        }
        for name in expected {
            assert!(
                levels.contains(&name.as_str()),
                "{name} missing: {levels:?}"
            );
        }
        for name in listed("EDGE_ABSENT_KERNELS") {
            assert!(
                !levels.contains(&name.as_str()),
                "{name} offered: {levels:?}"
            );
        }
    }

    /// The x86 levels whose features /proc/cpuinfo lists (AMX also needs Linux to lend
    /// the tile state, which it does from 5.16 on).
    fn x86_levels_from_cpuinfo() -> Vec<String> {
        let Ok(cpuinfo) = std::fs::read_to_string("/proc/cpuinfo") else {
            return Vec::new();
        };
        let Some(flags) = cpuinfo.lines().find(|line| line.starts_with("flags")) else {
            return Vec::new();
        };
        let flags: Vec<&str> = flags.split_whitespace().collect();
        let has = |all: &[&str]| all.iter().all(|flag| flags.contains(flag));
        let mut levels = Vec::new();
        if has(&["avx2", "fma"]) {
            levels.push("avx2".to_string());
            if has(&["avx512f", "avx512bw", "avx512vl"]) {
                levels.push("avx512".to_string());
                if has(&["avx512_vnni"]) {
                    levels.push("avx512vnni".to_string());
                    if has(&["amx_tile", "amx_int8"]) {
                        levels.push("amx".to_string());
                    }
                }
            }
        }
        levels
    }

    #[test]
    fn a_level_the_cpu_cannot_run_is_refused_by_name() {
        let error = choose(Some("no-such-cpu")).unwrap_err().to_string();
        assert!(error.contains("EDGE_KERNELS=no-such-cpu"), "{error}");
        assert!(error.contains("portable"), "{error}");
        assert_eq!(choose(Some("portable")).unwrap().level, "portable");
        let best = runnable().last().unwrap().level;
        assert_eq!(choose(None).unwrap().level, best);
        assert_eq!(choose(Some("")).unwrap().level, best);
    }

    /// The README's kernel list holds a row for the portable level and for every level of
    /// this architecture, with the kernels the table has, so it cannot go stale.
    #[test]
    fn the_readme_lists_the_kernel_table() {
        let readme = include_str!("../../README.md");
        let start = readme
            .find("<!-- kernel table -->")
            .expect("the README's kernel list");
        let rows: Vec<Vec<&str>> = readme[start..]
            .lines()
            .skip(3)
            .take_while(|line| line.starts_with('|'))
            .map(|line| line.trim_matches('|').split('|').map(str::trim).collect())
            .collect();
        let portable = Level {
            kernels: crate::kernels::portable::KERNELS,
            cpu: "every CPU",
            runs: || true,
        };
        for level in std::iter::once(&portable).chain(levels_of_this_architecture()) {
            let mut expected = vec![format!("`{}`", level.kernels.level), level.cpu.to_string()];
            expected.extend(
                level
                    .kernels
                    .entries()
                    .map(|(_, kernel)| format!("`{kernel}`")),
            );
            assert!(
                rows.iter().any(|row| *row == expected),
                "the README lists no row {expected:?}"
            );
        }
    }

    /// Each level replaces entries of the one below and keeps the rest; no level is
    /// listed twice.
    #[test]
    fn levels_are_distinct_and_named() {
        let levels = runnable();
        for (i, kernels) in levels.iter().enumerate() {
            assert!(!kernels.level.is_empty());
            assert!(
                levels[..i].iter().all(|lower| lower.level != kernels.level),
                "{} twice",
                kernels.level
            );
        }
    }
}
