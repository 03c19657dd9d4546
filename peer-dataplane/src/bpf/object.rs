//! The agent's loaded object: maps pinned (created, or reused from a previous run), the
//! pipeline verified and loaded, and the trace program loaded and pinned for the CLI.

use super::pins;
use anyhow::{Context, Result};
use aya::programs::Xdp;
use aya::Ebpf;
use peer_dataplane_common::program_names;
use std::path::Path;

pub struct LoadedObject {
    ebpf: Ebpf,
}

impl LoadedObject {
    /// Loads `object` with its maps under `pin_dir`, and verifies and loads the pipeline.
    pub fn load(object: &[u8], pin_dir: &Path) -> Result<LoadedObject> {
        let mut ebpf = pins::load(object, pin_dir)?;
        pins::xdp_program(&mut ebpf, program_names::PIPELINE)?
            .load()
            .context("verifying and loading the XDP program")?;
        Ok(LoadedObject { ebpf })
    }

    /// The pipeline program, loaded.
    pub fn pipeline(&mut self) -> Result<&mut Xdp> {
        pins::xdp_program(&mut self.ebpf, program_names::PIPELINE)
    }

    /// Verifies and loads the trace program (only the CLI runs it), and pins the programs
    /// the CLI's BPF_PROG_RUN uses under `pin_dir`.
    pub fn load_trace_and_pin(&mut self, pin_dir: &Path) -> Result<()> {
        pins::xdp_program(&mut self.ebpf, program_names::TRACE)?
            .load()
            .context("verifying and loading the trace program")?;
        pins::pin_programs(&mut self.ebpf, pin_dir)
    }
}
