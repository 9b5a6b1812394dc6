//! `ringpool`: zpool-style administration of ringpool pools, and the `serve` daemon.

mod cli;
mod control;
mod cpu_latency;
mod exec;
mod local;
mod output;
mod progress;
mod request;
mod serve;
mod size;
mod statedir;
mod table;

use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Parser;
use serde_json::Value;

use cli::{Cli, Command, InspectWhat, VolumeCommand};
use progress::{Activity, Reporter};
use request::{Progress, Request, Response};
use statedir::StateDir;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("RINGPOOL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Whether a running `serve` holds `pool` (a serve may hold only some of the known pools).
fn serve_holds(state: &StateDir, pool: &str) -> Result<bool> {
    Ok(
        match control::call(&state.control_socket(), &Request::Pools)? {
            Some(Response::Ok { value }) => value
                .as_array()
                .is_some_and(|a| a.iter().any(|p| p.as_str() == Some(pool))),
            _ => false,
        },
    )
}

/// Sends `req` to the `serve` holding the pool, or runs it on a pool opened here.
fn ask(state: &StateDir, req: Request) -> Result<Value> {
    ask_progress(state, req, &mut |_| {})
}

/// [`ask`], passing the progress of a long request (verify, a discard waited for) to
/// `progress`, wherever the request runs.
fn ask_progress(
    state: &StateDir,
    req: Request,
    progress: &mut dyn FnMut(Progress),
) -> Result<Value> {
    let held = match req.pool() {
        Some(p) => serve_holds(state, p)?,
        None => true,
    };
    let served = if held {
        control::call_with_progress(&state.control_socket(), &req, progress)?
    } else {
        None
    };
    let resp = match served {
        Some(resp) => resp,
        None => local::execute(state, &req, progress)?,
    };
    match resp {
        Response::Ok { value } => Ok(value),
        Response::Error { message } => bail!("{message}"),
        Response::Progress(_) => bail!("the server answered with progress only"),
    }
}

/// [`ask_progress`] with a bar (terminal) or plain lines showing `activity` on `pool`.
fn ask_showing(state: &StateDir, req: Request, activity: Activity) -> Result<Value> {
    let mut reporter = Reporter::new(activity, req.pool().unwrap_or_default());
    let r = ask_progress(state, req, &mut |p| reporter.update(p));
    reporter.finish();
    r
}

fn print_json(v: &Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Splits `POOL/VOL`.
fn split_volume(name: &str) -> Result<(String, String)> {
    match name.split_once('/') {
        Some((p, v)) if !p.is_empty() && !v.is_empty() && !v.contains('/') => {
            Ok((p.to_string(), v.to_string()))
        }
        _ => bail!("invalid volume name '{name}': expected POOL/VOLUME"),
    }
}

/// The pools a reporting command covers: the one it names, else every pool.
fn pools_for(state: &StateDir, pool: Option<String>) -> Result<Vec<String>> {
    match pool {
        Some(p) => Ok(vec![p]),
        None => all_pools(state),
    }
}

/// Every pool a reporting command without a pool argument covers.
fn all_pools(state: &StateDir) -> Result<Vec<String>> {
    if let Some(Response::Ok { value }) = control::call(&state.control_socket(), &Request::Pools)? {
        let mut names: Vec<String> = value
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        for known in state.pools()?.into_keys() {
            if !names.contains(&known) {
                names.push(known);
            }
        }
        return Ok(names);
    }
    Ok(state.pools()?.into_keys().collect())
}

fn run(cli: Cli) -> Result<ExitCode> {
    let state = StateDir::open(cli.state_dir.as_deref())?;
    match cli.command {
        Command::Create {
            options,
            size,
            force,
            pool,
            devices,
        } => {
            local::create(&state, &pool, &devices, &options, size.as_deref(), force)?;
            tell_serve(&state, &pool)?;
        }
        Command::Add {
            size,
            pool,
            devices,
        } => {
            let devices = local::prepare_devices(&devices, size.as_deref())?;
            local::check_unused(&pool, &devices)?;
            let devs = devices.iter().map(|d| d.display().to_string()).collect();
            ask(
                &state,
                Request::Add {
                    pool: pool.clone(),
                    devices: devs,
                },
            )?;
            local::remember_added(&state, &pool, &devices)?;
        }
        Command::Import {
            dirs,
            rewind_to_checkpoint,
            readonly,
            recover,
            force,
            json,
            pool,
        } => {
            let req = local::ImportRequest {
                json,
                dirs: &dirs,
                name: pool.as_deref(),
                rewind_to_checkpoint,
                readonly,
                recover,
                force,
            };
            if let Some(name) = local::import(&state, &req)? {
                tell_serve(&state, &name)?;
            }
        }
        Command::Export { pool } => {
            if serve_holds(&state, &pool)? {
                ask(&state, Request::Export { pool: pool.clone() })?;
            } else {
                local::export(&state, &pool)?;
            }
            state.set_pool(&pool, None)?;
        }
        Command::Status {
            verbose,
            parsable,
            json,
            pool,
        } => {
            let pools = pools_for(&state, pool)?;
            if pools.is_empty() && !json {
                println!("no pools available");
            }
            let mut values = Vec::new();
            for p in pools {
                values.push(ask(&state, Request::Status { pool: p })?);
            }
            if json {
                print_json(&Value::Array(values))?;
            } else {
                let texts: Vec<String> = values
                    .iter()
                    .map(|v| output::status(v, verbose, parsable))
                    .collect();
                print!("{}", texts.join("\n"));
            }
        }
        Command::List {
            verbose,
            scripted,
            parsable,
            columns,
            json,
            pool,
        } => {
            let pools = pools_for(&state, pool)?;
            let mut values = Vec::new();
            for p in pools {
                values.push(ask(&state, Request::List { pool: p })?);
            }
            if json {
                print_json(&Value::Array(values))?;
            } else {
                let cols: Vec<String> = match columns {
                    Some(c) => {
                        let cols: Vec<String> =
                            c.split(',').map(|s| s.trim().to_lowercase()).collect();
                        if let Some(bad) = cols
                            .iter()
                            .find(|c| !output::LIST_COLUMNS.contains(&c.as_str()))
                        {
                            bail!("invalid property '{bad}'");
                        }
                        cols
                    }
                    None => output::LIST_COLUMNS
                        .iter()
                        .map(|s| (*s).to_string())
                        .collect(),
                };
                if values.is_empty() && !scripted {
                    println!("no pools available");
                } else {
                    print!(
                        "{}",
                        output::list(&values, &cols, verbose, scripted, parsable)
                    );
                }
            }
        }
        Command::Get {
            scripted,
            parsable,
            json,
            property,
            pool,
        } => {
            let v = ask(&state, Request::Get { pool, property })?;
            if json {
                print_json(&v)?;
            } else {
                print!(
                    "{}",
                    output::get(v.as_array().map_or(&[][..], |a| a), scripted, parsable)
                );
            }
        }
        Command::Set { assignment, pool } => {
            let Some((property, value)) = assignment.split_once('=') else {
                bail!("missing value in property=value argument");
            };
            ask(
                &state,
                Request::Set {
                    pool,
                    property: property.to_string(),
                    value: value.to_string(),
                },
            )?;
        }
        Command::Checkpoint {
            discard,
            wait,
            args,
        } => {
            return checkpoint(&state, discard, wait, &args);
        }
        Command::Wait { activity, pool } => {
            if activity != "discard" {
                bail!("invalid activity '{activity}': the activities are: discard");
            }
            wait_discard(&state, &pool)?;
        }
        Command::Volume(cmd) => volume(&state, cmd)?,
        Command::Reguid { pool } => {
            ask(&state, Request::Reguid { pool })?;
        }
        Command::Clear { pool } => {
            ask(&state, Request::Clear { pool })?;
        }
        Command::History { json, pool } => {
            let v = ask(&state, Request::History { pool: pool.clone() })?;
            if json {
                print_json(&v)?;
            } else {
                print!(
                    "{}",
                    output::history(&pool, v.as_array().map_or(&[][..], |a| a))
                );
            }
        }
        Command::Verify { json, pool } => {
            let v = ask_showing(
                &state,
                Request::Verify { pool: pool.clone() },
                Activity::Verify,
            )?;
            let clean = v["clean"].as_bool().unwrap_or(false);
            if json {
                print_json(&v)?;
            } else {
                print!("{}", output::verify(&pool, &v));
            }
            if !clean {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Inspect(args) => inspect(&state, &args)?,
        Command::Serve(args) => serve::run(&state, &args)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Lets a running `serve` open a pool the state directory just learned about.
fn tell_serve(state: &StateDir, pool: &str) -> Result<()> {
    if let Some(Response::Error { message }) = control::call(
        &state.control_socket(),
        &Request::Open {
            pool: pool.to_string(),
        },
    )? {
        bail!("{message}");
    }
    Ok(())
}

/// Parses `DEV:INDEX`.
fn parse_metaslab(s: &str) -> Result<(u32, u64)> {
    let parsed = s
        .split_once(':')
        .and_then(|(d, i)| Some((d.parse().ok()?, i.parse().ok()?)));
    parsed.ok_or_else(|| anyhow::anyhow!("invalid metaslab '{s}': expected DEVICE:INDEX, e.g. 0:3"))
}

fn inspect(state: &StateDir, args: &cli::InspectArgs) -> Result<()> {
    let pool = args.pool.clone().unwrap_or_default();
    let req = match args.what {
        InspectWhat::Labels | InspectWhat::Uberblocks => return local::inspect_labels(state, args),
        InspectWhat::Metaslabs => Request::Metaslabs { pool: pool.clone() },
        InspectWhat::Spacemap => {
            let (device, metaslab) = match (&args.metaslab, args.checkpoint) {
                (Some(m), _) => {
                    let (d, i) = parse_metaslab(m)?;
                    (d, Some(i))
                }
                (None, Some(d)) => (d, None),
                (None, None) => {
                    bail!("inspect spacemap: choose --metaslab DEVICE:INDEX or --checkpoint DEVICE")
                }
            };
            Request::SpaceMap {
                pool: pool.clone(),
                device,
                metaslab,
            }
        }
    };
    let v = if !args.device.is_empty() {
        local::execute_on_devices(&args.device, args.pool.as_deref(), &req)?
    } else if args.pool.is_none() {
        bail!("inspect needs a pool or --device");
    } else {
        ask(state, req)?
    };
    if args.json {
        return print_json(&v);
    }
    match args.what {
        InspectWhat::Metaslabs => print!(
            "{}",
            output::metaslabs(v.as_array().map_or(&[][..], |a| a), args.parsable)
        ),
        _ => print!("{}", output::space_map(&v, args.parsable)),
    }
    Ok(())
}

fn checkpoint(state: &StateDir, discard: bool, wait: bool, args: &[String]) -> Result<ExitCode> {
    if wait && !discard {
        bail!("--wait only valid when --discard also specified");
    }
    let pool = match args {
        [] => bail!("missing pool argument"),
        [p] => p.clone(),
        _ => bail!("too many arguments"),
    };
    if pool.contains('/') {
        bail!("'ringpool checkpoint' doesn't work on volumes. A checkpoint saves the whole pool");
    }
    if discard {
        if wait && !serve_holds(state, &pool)? {
            // No serve: the discard reactor runs in this process, so wait in the same open.
            ask_showing(
                state,
                Request::DiscardCheckpoint { pool, wait: true },
                Activity::Discard,
            )?;
        } else {
            ask(
                state,
                Request::DiscardCheckpoint {
                    pool: pool.clone(),
                    wait: false,
                },
            )?;
            if wait {
                wait_discard(state, &pool)?;
            }
        }
    } else {
        ask(state, Request::Checkpoint { pool })?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Waits for a discard: with progress by polling `serve`, or in one open of the pool here.
fn wait_discard(state: &StateDir, pool: &str) -> Result<()> {
    if serve_holds(state, pool)? {
        return local::wait_discard(pool, |p| {
            ask(
                state,
                Request::Status {
                    pool: p.to_string(),
                },
            )
        });
    }
    ask_showing(
        state,
        Request::WaitDiscard {
            pool: pool.to_string(),
        },
        Activity::Discard,
    )
    .map(|_| ())
}

fn volume(state: &StateDir, cmd: VolumeCommand) -> Result<()> {
    match cmd {
        VolumeCommand::Create {
            size,
            block_size,
            name,
        } => {
            let (pool, volume) = split_volume(&name)?;
            let size = size::parse_size(&size)?;
            let bs = size::parse_size(&block_size)?;
            let block_size =
                u32::try_from(bs).map_err(|_| anyhow::anyhow!("block size too large"))?;
            ask(
                state,
                Request::VolumeCreate {
                    pool,
                    volume,
                    size,
                    block_size,
                },
            )?;
        }
        VolumeCommand::Destroy { name } => {
            let (pool, volume) = split_volume(&name)?;
            ask(state, Request::VolumeDestroy { pool, volume })?;
        }
        VolumeCommand::Resize { size, name } => {
            let (pool, volume) = split_volume(&name)?;
            let size = size::parse_size(&size)?;
            ask(state, Request::VolumeResize { pool, volume, size })?;
        }
        VolumeCommand::List {
            scripted,
            parsable,
            json,
            pool,
        } => {
            let pools = pools_for(state, pool)?;
            let mut vols = Vec::new();
            for p in pools {
                let v = ask(state, Request::VolumeList { pool: p })?;
                vols.extend(v.as_array().cloned().unwrap_or_default());
            }
            if json {
                print_json(&Value::Array(vols))?;
            } else {
                print!("{}", output::volumes(&vols, scripted, parsable));
            }
        }
    }
    Ok(())
}
