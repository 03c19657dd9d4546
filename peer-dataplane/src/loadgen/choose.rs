//! Which generator runs. `auto` takes the cheapest one this kernel allows: live frames if
//! a one-frame probe of them works, else AF_XDP if a socket can be bound at the far end of
//! the port, else AF_PACKET; and says why. A generator asked for by name is used as it is,
//! except live frames, which are probed first so that a refusal is reported before any
//! frame is sent, with its errno and the way out.

use anyhow::{bail, Result};

/// `--generator`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GeneratorArg {
    Auto,
    LiveFrames,
    AfXdp,
    AfPacket,
}

impl std::str::FromStr for GeneratorArg {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<GeneratorArg> {
        Ok(match s {
            "auto" => GeneratorArg::Auto,
            "live-frames" => GeneratorArg::LiveFrames,
            "af-xdp" => GeneratorArg::AfXdp,
            "af-packet" => GeneratorArg::AfPacket,
            _ => bail!("unknown generator {s:?}: auto, live-frames, af-xdp or af-packet"),
        })
    }
}

/// A generator that runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Generator {
    LiveFrames,
    AfXdp,
    AfPacket,
}

impl Generator {
    pub fn name(self) -> &'static str {
        match self {
            Generator::LiveFrames => "live-frames",
            Generator::AfXdp => "af-xdp",
            Generator::AfPacket => "af-packet",
        }
    }
}

/// What to do when live frames are refused.
pub const LIVE_FRAMES_HINT: &str = "This kernel does not run XDP programs on live frames \
    (BPF_F_TEST_XDP_LIVE_FRAMES); send real frames into the port instead: --generator af-xdp \
    (or af-packet, or auto, which picks what works)";

/// The generator that runs, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub generator: Generator,
    pub why: String,
}

/// Decides the generator for `arg`. `live_frames` probes live frames (its error is the
/// refusal, errno included); `af_xdp` tries an AF_XDP socket at the far end of the port.
/// Each probe runs at most once, and only when the decision needs it.
pub fn choose(
    arg: GeneratorArg,
    live_frames: impl FnOnce() -> std::result::Result<(), String>,
    af_xdp: impl FnOnce() -> std::result::Result<(), String>,
) -> Result<Choice> {
    let named = |generator| Choice {
        generator,
        why: "asked for".to_string(),
    };
    Ok(match arg {
        GeneratorArg::LiveFrames => match live_frames() {
            Ok(()) => named(Generator::LiveFrames),
            Err(refusal) => bail!("{refusal}. {LIVE_FRAMES_HINT}"),
        },
        GeneratorArg::AfXdp => named(Generator::AfXdp),
        GeneratorArg::AfPacket => named(Generator::AfPacket),
        GeneratorArg::Auto => match live_frames() {
            Ok(()) => Choice {
                generator: Generator::LiveFrames,
                why: "live frames allowed by this kernel (probe ran)".to_string(),
            },
            Err(live) => match af_xdp() {
                Ok(()) => Choice {
                    generator: Generator::AfXdp,
                    why: format!("live frames refused: {live}"),
                },
                Err(xdp) => Choice {
                    generator: Generator::AfPacket,
                    why: format!("live frames refused: {live}; AF_XDP unavailable: {xdp}"),
                },
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    const EPERM: &str = "BPF_PROG_RUN with live frames: EPERM (Operation not permitted)";

    /// (live frames probe, AF_XDP probe) -> what runs, and which probes ran.
    fn decide(
        arg: GeneratorArg,
        live: std::result::Result<(), &str>,
        xdp: std::result::Result<(), &str>,
    ) -> (Result<Choice>, [bool; 2]) {
        let ran = [Cell::new(false), Cell::new(false)];
        let c = choose(
            arg,
            || {
                ran[0].set(true);
                live.map_err(String::from)
            },
            || {
                ran[1].set(true);
                xdp.map_err(String::from)
            },
        );
        (c, [ran[0].get(), ran[1].get()])
    }

    #[test]
    fn auto_prefers_live_frames_and_probes_nothing_else() {
        let (c, ran) = decide(GeneratorArg::Auto, Ok(()), Ok(()));
        assert_eq!(c.unwrap().generator, Generator::LiveFrames);
        assert_eq!(ran, [true, false]);
    }

    #[test]
    fn auto_falls_back_to_af_xdp_naming_the_refusal() {
        let (c, ran) = decide(GeneratorArg::Auto, Err(EPERM), Ok(()));
        let c = c.unwrap();
        assert_eq!(c.generator, Generator::AfXdp);
        assert!(c.why.contains("EPERM"), "{}", c.why);
        assert_eq!(ran, [true, true]);
    }

    #[test]
    fn auto_falls_back_to_af_packet_when_af_xdp_fails_too() {
        let (c, _) = decide(
            GeneratorArg::Auto,
            Err(EPERM),
            Err("opening a socket: EAFNOSUPPORT"),
        );
        let c = c.unwrap();
        assert_eq!(c.generator, Generator::AfPacket);
        assert!(
            c.why.contains("EPERM") && c.why.contains("EAFNOSUPPORT"),
            "{}",
            c.why
        );
    }

    #[test]
    fn live_frames_by_name_fails_with_errno_and_the_way_out() {
        let (c, ran) = decide(GeneratorArg::LiveFrames, Err(EPERM), Ok(()));
        let e = c.unwrap_err().to_string();
        assert!(
            e.contains("EPERM") && e.contains("--generator af-xdp"),
            "{e}"
        );
        assert_eq!(ran, [true, false]);
        let (c, _) = decide(GeneratorArg::LiveFrames, Ok(()), Ok(()));
        assert_eq!(c.unwrap().generator, Generator::LiveFrames);
    }

    #[test]
    fn a_socket_generator_by_name_probes_nothing() {
        for (arg, g) in [
            (GeneratorArg::AfXdp, Generator::AfXdp),
            (GeneratorArg::AfPacket, Generator::AfPacket),
        ] {
            let (c, ran) = decide(arg, Err(EPERM), Err("no"));
            assert_eq!(c.unwrap().generator, g);
            assert_eq!(ran, [false, false]);
        }
    }
}
