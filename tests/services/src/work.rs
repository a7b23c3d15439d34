//! payment-service's stand-in for the GPU job: a fixed amount of CPU work per request, and
//! whether a GPU device is visible to the container.

use std::path::Path;

/// `rounds` rounds of a 64-bit mix (splitmix64) seeded by `seed`: CPU time proportional to
/// `rounds`, nothing allocated, a result the optimizer cannot drop.
pub fn cpu_work(seed: u64, rounds: u32) -> u64 {
    let mut x = seed;
    let mut acc = 0u64;
    for _ in 0..rounds {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        acc ^= z ^ (z >> 31);
    }
    std::hint::black_box(acc)
}

/// What the container sees of GPUs: the device nodes the NVIDIA runtime mounts
/// (`/dev/nvidia0`, …) and the `NVIDIA_VISIBLE_DEVICES` it sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuView {
    pub devices: Vec<String>,
    pub visible_devices: Option<String>,
}

impl GpuView {
    /// Reads `dev` (normally `/dev`) and the given `NVIDIA_VISIBLE_DEVICES`.
    pub fn read(dev: &Path, visible_devices: Option<String>) -> GpuView {
        let mut devices: Vec<String> = std::fs::read_dir(dev)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| {
                n.strip_prefix("nvidia")
                    .is_some_and(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()))
            })
            .collect();
        devices.sort();
        GpuView {
            devices,
            visible_devices: visible_devices.filter(|v| !v.is_empty() && v != "void"),
        }
    }

    /// A device node is there.
    pub fn visible(&self) -> bool {
        !self.devices.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_depends_on_seed_and_rounds() {
        assert_ne!(cpu_work(1, 1000), cpu_work(2, 1000));
        assert_ne!(cpu_work(1, 1000), cpu_work(1, 1001));
        assert_eq!(cpu_work(7, 0), 0);
    }

    #[test]
    fn only_numbered_nvidia_devices_count() -> std::io::Result<()> {
        let dir = std::env::temp_dir().join(format!("meshguard-gpu-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        for n in ["nvidiactl", "nvidia-uvm", "null"] {
            std::fs::write(dir.join(n), b"")?;
        }
        assert!(!GpuView::read(&dir, None).visible());
        std::fs::write(dir.join("nvidia0"), b"")?;
        let view = GpuView::read(&dir, Some("void".into()));
        std::fs::remove_dir_all(&dir)?;
        assert_eq!(view.devices, ["nvidia0"]);
        assert_eq!(view.visible_devices, None);
        Ok(())
    }
}
