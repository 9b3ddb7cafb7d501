//! Builds a VM from a [`VmConfig`] and runs it until the guest stops it.

use crate::api::{self, ApiHandler, Request};
use crate::boot;
use crate::config::VmConfig;
use crate::devices::serial::Console;
use crate::devices::MmioBus;
use crate::eventloop::{self, ExitSignal};
use crate::fdt::{self, FdtConfig};
use crate::gic::{self, Gic};
use crate::layout;
use crate::memory;
use crate::sdei::{self, Sdei};
use crate::vcpu::{self, install_kick_handler, HypercallHandler, Kicker, Vcpu, VcpuStop};
use kvm_ioctls::Kvm;
use std::os::unix::thread::JoinHandleExt;
use std::sync::{Arc, Mutex};
use vmm_sys_util::eventfd::EventFd;

/// Errors building or running the VM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `/dev/kvm` could not be opened.
    #[error("Cannot open /dev/kvm: {0} (is KVM available and accessible?)")]
    Kvm(#[source] kvm_ioctls::Error),
    /// Guest memory.
    #[error(transparent)]
    Memory(#[from] memory::Error),
    /// Kernel, initrd or device tree loading.
    #[error(transparent)]
    Boot(#[from] boot::Error),
    /// A vCPU.
    #[error(transparent)]
    Vcpu(#[from] vcpu::Error),
    /// A requested feature is not available.
    #[error("{feature} was requested, but this host's KVM does not offer it ({cap})")]
    Unsupported {
        /// The feature.
        feature: &'static str,
        /// The KVM capability that is missing.
        cap: &'static str,
    },
    /// Creating a vCPU.
    #[error("Cannot create vCPU {0}: {1}")]
    CreateVcpu(u8, String),
    /// The GIC.
    #[error(transparent)]
    Gic(#[from] gic::Error),
    /// The device tree.
    #[error(transparent)]
    Fdt(#[from] fdt::Error),
    /// Device set-up.
    #[error("Cannot set up the {what}: {source}")]
    Device {
        /// Which device.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The event loop.
    #[error(transparent)]
    EventLoop(#[from] eventloop::Error),
    /// SDEI.
    #[error(transparent)]
    Sdei(#[from] sdei::Error),
    /// The API socket.
    #[error(transparent)]
    Api(api::Error),
    /// A thread could not be started.
    #[error("Cannot start the thread for vCPU {0}: {1}")]
    Thread(u8, #[source] std::io::Error),
}

impl Error {
    /// Whether the error is the user's to fix (bad input or an unavailable feature) rather
    /// than a failure of refvmm or KVM at run time.
    pub fn is_user_error(&self) -> bool {
        match self {
            Error::Boot(_) | Error::Kvm(_) | Error::Api(_) | Error::Unsupported { .. } => true,
            Error::Memory(memory::Error::Mte(_)) | Error::Memory(memory::Error::Create(_)) => true,
            _ => false,
        }
    }
}

/// Result of running a VM.
pub type Result<T> = std::result::Result<T, Error>;

/// Refuses, before anything is built, features this KVM lacks.
fn check_features(kvm: &Kvm, cfg: &VmConfig) -> Result<()> {
    use kvm_bindings::{
        KVM_CAP_ARM_MTE, KVM_CAP_ARM_PMU_V3, KVM_CAP_ARM_PTRAUTH_ADDRESS,
        KVM_CAP_ARM_PTRAUTH_GENERIC, KVM_CAP_ARM_SVE,
    };
    let wanted = [
        (cfg.mte, "MTE (--mte)", KVM_CAP_ARM_MTE, "KVM_CAP_ARM_MTE"),
        (
            cfg.features.pmu,
            "A PMU (--pmu)",
            KVM_CAP_ARM_PMU_V3,
            "KVM_CAP_ARM_PMU_V3",
        ),
        (
            cfg.features.sve,
            "SVE (--sve)",
            KVM_CAP_ARM_SVE,
            "KVM_CAP_ARM_SVE",
        ),
        (
            cfg.features.pauth,
            "Pointer authentication (--pauth)",
            KVM_CAP_ARM_PTRAUTH_ADDRESS,
            "KVM_CAP_ARM_PTRAUTH_ADDRESS",
        ),
        (
            cfg.features.pauth,
            "Pointer authentication (--pauth)",
            KVM_CAP_ARM_PTRAUTH_GENERIC,
            "KVM_CAP_ARM_PTRAUTH_GENERIC",
        ),
    ];
    for (asked, feature, cap, name) in wanted {
        if asked && kvm.check_extension_raw(u64::from(cap)) <= 0 {
            return Err(Error::Unsupported { feature, cap: name });
        }
    }
    Ok(())
}

/// Builds the VM and runs it; returns how the guest stopped it.
pub fn run(cfg: &VmConfig) -> Result<VcpuStop> {
    let kvm = Kvm::new().map_err(Error::Kvm)?;
    check_features(&kvm, cfg)?;
    let (handle, mem) = memory::create(&kvm, cfg.memory, cfg.mte)?;
    log::info!(
        "guest memory ready ({} MiB, MTE {})",
        cfg.memory >> 20,
        cfg.mte
    );
    let loaded = boot::load_images(mem.memory(), cfg)?;
    log::info!("kernel at {:#x}, initrd {:x?}", loaded.entry, loaded.initrd);

    let base_init = Vcpu::preferred_init(handle.vm())?;
    let mut vcpus = Vec::with_capacity(usize::from(cfg.cpus));
    for i in 0..cfg.cpus {
        let fd = handle
            .create_vcpu(u64::from(i))
            .map_err(|e| Error::CreateVcpu(i, e))?;
        vcpus.push(Vcpu::new(fd, i, &base_init, cfg.features)?);
    }
    let mpidrs: Vec<u64> = vcpus.iter().map(Vcpu::mpidr).collect();
    let kicker = Arc::new(Kicker::new(vcpus.len()));
    let sdei = if cfg.sdei {
        install_kick_handler().map_err(|source| Error::Device {
            what: "vCPU kick signal",
            source,
        })?;
        let s = Arc::new(Sdei::new(&mpidrs, cfg.mte, kicker.clone())?);
        s.install_filter(handle.vm())?;
        Some(s)
    } else {
        None
    };
    let mut gic = Gic::new(handle.vm())?;
    if cfg.its {
        gic.add_its(handle.vm())?;
    }
    if cfg.features.pmu {
        for v in &vcpus {
            v.init_pmu(layout::PMU_PPI)?;
        }
    }
    log::info!("{} vCPUs and the GIC ready", cfg.cpus);

    let mut bus = MmioBus::default();
    let uart_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| Error::Device {
        what: "console interrupt",
        source,
    })?;
    handle
        .vm()
        .register_irqfd(&uart_irq, layout::UART_SPI)
        .map_err(|e| Error::Device {
            what: "console interrupt",
            source: std::io::Error::from_raw_os_error(e.errno()),
        })?;
    let console = Arc::new(Mutex::new(Console::new(uart_irq, std::io::stdout())));
    bus.insert(layout::UART_BASE, layout::UART_SIZE, console.clone())
        .map_err(|e| Error::Device {
            what: "console",
            source: std::io::Error::other(e),
        })?;

    let blob = fdt::build(&FdtConfig {
        mpidrs,
        memory: cfg.memory,
        cmdline: cfg.cmdline.clone(),
        initrd: loaded.initrd,
        sdei: cfg.sdei,
        pmu: cfg.features.pmu,
        its: cfg.its,
        virtio: Vec::new(),
    })?;
    let fdt_addr = boot::write_fdt(mem.memory(), cfg.memory, &blob)?;
    if let Some(boot_cpu) = vcpus.first() {
        boot_cpu.set_boot_regs(loaded.entry, fdt_addr)?;
    }

    let exit = ExitSignal::new().map_err(|source| Error::Device {
        what: "exit notification",
        source,
    })?;
    let bus = Arc::new(bus);
    log::info!("starting the vCPUs");
    let hooks: Option<Arc<dyn HypercallHandler>> =
        sdei.clone().map(|s| s as Arc<dyn HypercallHandler>);
    let api = match &cfg.api_socket {
        Some(path) => {
            let listener = api::bind(path).map_err(Error::Api)?;
            let handler: Arc<dyn ApiHandler> = Arc::new(VmApi { sdei: sdei.clone() });
            Some((listener, handler))
        }
        None => None,
    };
    for (i, mut v) in (0u8..).zip(vcpus) {
        let bus = bus.clone();
        let exit = exit.clone();
        let hooks = hooks.clone();
        let t = std::thread::Builder::new()
            .name(format!("vcpu{i}"))
            .spawn(move || {
                let stop = match v.run(&bus, hooks.as_ref()) {
                    Ok(stop) => stop,
                    Err(e) => {
                        eprintln!("refvmm: {e}");
                        VcpuStop::Crash
                    }
                };
                exit.signal(stop);
            })
            .map_err(|e| Error::Thread(i, e))?;
        kicker.register(usize::from(i), t.as_pthread_t());
    }
    let stop = eventloop::run(console, &exit, api)?;
    if let Some(p) = &cfg.api_socket {
        let _ = std::fs::remove_file(p);
    }
    log::info!("the guest stopped the VM: {stop:?}");
    // Keep the VM (and its memory) alive until here.
    drop(handle);
    log::info!("VM torn down");
    Ok(stop)
}

/// The VM as the API sees it.
struct VmApi {
    sdei: Option<Arc<Sdei>>,
}

impl ApiHandler for VmApi {
    fn handle(&self, request: Request) -> std::result::Result<String, String> {
        match request {
            Request::Status => Ok("running".into()),
            Request::SdeiSignal { event, vcpu } => {
                let sdei = self
                    .sdei
                    .as_ref()
                    .ok_or("SDEI is not enabled (start refvmm with --sdei)")?;
                match sdei.raise(event, vcpu) {
                    Ok(sdei_dispatch::RaiseOutcome::Pending) => Ok("pending".into()),
                    Ok(sdei_dispatch::RaiseOutcome::AlreadyPending) => Ok("already-pending".into()),
                    Ok(sdei_dispatch::RaiseOutcome::NotRegistered) => Ok("not-registered".into()),
                    Ok(sdei_dispatch::RaiseOutcome::NotBound) => Ok("not-bound".into()),
                    Err(e) => Err(e.to_string()),
                }
            }
        }
    }
}
