//! Sans-IO fixed-newstyle handshake: greeting, client flags and option haggling.
//!
//! The state machine never touches a socket. The connection driver sends [`Handshake::greeting`],
//! then loops: the machine says how many bytes it needs next ([`Step::Need`]) or how many to
//! throw away ([`Step::Discard`]); the driver reads exactly that, feeds it to
//! [`Handshake::receive`], sends whatever the machine appended to `out`, and stops on
//! [`Step::Done`] (transmission starts) or [`Step::Close`] (soft disconnect after sending `out`);
//! [`Step::StartTls`] asks it to send `out` and run TLS on the connection from then on.
//! A returned [`HandshakeError`] means a hard disconnect without sending anything more.
//!
//! Memory is bounded: an option payload is only buffered up to [`HandshakeConfig::max_option_len`];
//! longer ones are discarded by the driver in fixed-size pieces and answered with an error, and
//! options longer than [`HandshakeConfig::max_discard_len`] or sessions with more than
//! [`HandshakeConfig::max_options`] options count as a denial of service (hard disconnect).

use super::proto::{self, be, client_flags, handshake_flags, info, opt, rep, tflags};
use super::reply::ReplyMode;

/// What the handshake needs to know about an export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportInfo {
    /// Canonical name (as listed).
    pub name: String,
    /// Human-readable description (may be empty).
    pub description: String,
    /// Size in bytes.
    pub size: u64,
    /// Writes, trims and zeroing are refused with EPERM.
    pub read_only: bool,
    /// Minimum block size (power of two, 1..=64 KiB): requests must be aligned to it.
    pub min_block: u32,
    /// Preferred block size (power of two, >= max(min, 512)).
    pub preferred_block: u32,
    /// Largest READ/WRITE payload accepted.
    pub max_payload: u32,
    /// Rotational hint.
    pub rotational: bool,
    /// FLUSH/FUA on any connection commit the whole export (advertise CAN_MULTI_CONN).
    pub multi_conn: bool,
}

impl ExportInfo {
    /// Transmission flags for this export, given whether structured replies (or extended
    /// headers) were negotiated: SEND_DF only makes sense with structured replies.
    pub fn transmission_flags(&self, structured: bool) -> u16 {
        let mut f = tflags::HAS_FLAGS | tflags::SEND_FLUSH | tflags::SEND_FUA | tflags::SEND_CACHE;
        if self.read_only {
            f |= tflags::READ_ONLY;
        } else {
            f |= tflags::SEND_TRIM | tflags::SEND_WRITE_ZEROES | tflags::SEND_FAST_ZERO;
        }
        if self.rotational {
            f |= tflags::ROTATIONAL;
        }
        if self.multi_conn {
            f |= tflags::CAN_MULTI_CONN;
        }
        if structured {
            f |= tflags::SEND_DF;
        }
        f
    }
}

/// The set of exports the handshake resolves names against.
pub trait ExportCatalog {
    /// Handle carried to the transmission phase (e.g. an `Arc` of the backend).
    type Export;
    /// Resolves a name (`""` is the default export) to its description and handle.
    fn lookup(&self, name: &str) -> Option<(ExportInfo, Self::Export)>;
    /// `(name, description)` of every export, for NBD_OPT_LIST.
    fn list(&self) -> Vec<(String, String)>;
    /// True while the server shuts down: options are refused with ERR_SHUTDOWN.
    fn shutting_down(&self) -> bool {
        false
    }
}

/// Limits and switches of the handshake.
#[derive(Debug, Clone)]
pub struct HandshakeConfig {
    /// Largest option payload that is buffered and parsed.
    pub max_option_len: u32,
    /// Largest option payload that is discarded (with an error reply); beyond: hard disconnect.
    pub max_discard_len: u32,
    /// Most options per connection before the client counts as hostile.
    pub max_options: u32,
    /// Offer NBD_OPT_EXTENDED_HEADERS.
    pub extended_headers: bool,
    /// Whether NBD_OPT_STARTTLS is available, and whether it is required before anything else.
    pub tls: TlsPolicy,
}

/// The server's TLS mode (the protocol's NOTLS, and FORCEDTLS for every export).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsPolicy {
    /// No TLS: NBD_OPT_STARTTLS gets ERR_POLICY.
    #[default]
    Off,
    /// NBD_OPT_STARTTLS upgrades the connection; clients may also stay in plain text.
    Offered,
    /// Until NBD_OPT_STARTTLS succeeds, every option but STARTTLS and ABORT gets ERR_TLS_REQD
    /// (NBD_OPT_EXPORT_NAME, which cannot be answered with an error, disconnects).
    Required,
}

impl Default for HandshakeConfig {
    fn default() -> Self {
        HandshakeConfig {
            max_option_len: 64 * 1024,
            max_discard_len: 16 * 1024 * 1024,
            max_options: 4096,
            extended_headers: true,
            tls: TlsPolicy::Off,
        }
    }
}

/// Context id of `base:allocation` when selected.
pub const BASE_ALLOCATION_ID: u32 = 1;

/// The outcome of a successful handshake.
#[derive(Debug, Clone)]
pub struct Negotiated<E> {
    /// The export handle.
    pub export: E,
    /// What the client was told about it.
    pub info: ExportInfo,
    /// Transmission flags sent.
    pub flags: u16,
    /// Reply style of the transmission phase.
    pub mode: ReplyMode,
    /// `base:allocation` context id if selected for this export.
    pub base_allocation: Option<u32>,
    /// The client asked for NBD_INFO_BLOCK_SIZE (and so promised to honour it).
    pub client_knows_block_size: bool,
}

/// What the driver does next.
#[derive(Debug)]
pub enum Step<E> {
    /// Read exactly this many bytes and pass them to [`Handshake::receive`].
    Need(usize),
    /// Read and drop this many bytes, then call [`Handshake::receive`] with an empty slice.
    Discard(u64),
    /// Send `out`, then enter transmission.
    Done(Box<Negotiated<E>>),
    /// Send `out`, then close (the client aborted).
    Close,
    /// Send `out` (the ACK of NBD_OPT_STARTTLS), then run the TLS handshake on the connection
    /// and go on, inside TLS, with [`Handshake::next_step`].
    StartTls,
}

/// Fatal handshake failures: the server drops the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The client set flags that were not offered.
    #[error("client sent unknown or unoffered flags {0:#x}")]
    BadClientFlags(u32),
    /// An option header without IHAVEOPT.
    #[error("bad option magic {0:#018x}")]
    BadOptionMagic(u64),
    /// An option longer than the discard limit.
    #[error("option {option} with {len} bytes of data exceeds the limit")]
    OptionTooLong {
        /// Option number.
        option: u32,
        /// Announced length.
        len: u32,
    },
    /// Too many options in one session.
    #[error("more than {0} options in one handshake")]
    TooManyOptions(u32),
    /// NBD_OPT_EXPORT_NAME for an export that does not exist (cannot be answered with an error).
    #[error("NBD_OPT_EXPORT_NAME for unknown export {0:?}")]
    UnknownExport(String),
    /// NBD_OPT_EXPORT_NAME is forbidden after extended headers.
    #[error("NBD_OPT_EXPORT_NAME after extended headers were negotiated")]
    ExportNameAfterExtendedHeaders,
    /// NBD_OPT_EXPORT_NAME while the server shuts down.
    #[error("server is shutting down")]
    ShuttingDown,
    /// NBD_OPT_EXPORT_NAME before NBD_OPT_STARTTLS on a server that requires TLS.
    #[error("NBD_OPT_EXPORT_NAME without TLS on a server that requires TLS")]
    TlsRequired,
    /// The driver passed the wrong number of bytes (a driver bug, not a client one).
    #[error("driver fed {got} bytes where {expected} were expected")]
    UnexpectedInput {
        /// Bytes expected.
        expected: usize,
        /// Bytes given.
        got: usize,
    },
    /// receive() after the handshake finished.
    #[error("handshake already finished")]
    Finished,
}

#[derive(Debug, Clone, Copy)]
enum State {
    ClientFlags,
    OptHeader,
    OptPayload { option: u32, len: usize },
    Discarding { option: u32, reply: u32 },
    Finished,
}

/// The handshake state machine of one connection.
#[derive(Debug)]
pub struct Handshake {
    cfg: HandshakeConfig,
    state: State,
    no_zeroes: bool,
    structured: bool,
    extended: bool,
    /// (canonical export name, context id) chosen by the last SET_META_CONTEXT.
    meta: Option<(String, u32)>,
    options_seen: u32,
    /// NBD_OPT_STARTTLS was acknowledged: everything since runs inside TLS.
    tls_active: bool,
}

/// Length of the server greeting.
pub const GREETING_LEN: usize = 18;
/// Length of an option request header.
pub const OPTION_HEADER_LEN: usize = 16;

impl Handshake {
    /// A new handshake; send [`Handshake::greeting`] first, then read [`CLIENT_FLAGS_LEN`] bytes.
    pub fn new(cfg: HandshakeConfig) -> Handshake {
        Handshake {
            cfg,
            state: State::ClientFlags,
            no_zeroes: false,
            structured: false,
            extended: false,
            meta: None,
            options_seen: 0,
            tls_active: false,
        }
    }

    /// What to read next, e.g. after the driver has finished the TLS handshake that
    /// [`Step::StartTls`] asked for.
    pub fn next_step<E>(&self) -> Step<E> {
        Step::Need(self.expected())
    }

    /// Whether NBD_OPT_STARTTLS was acknowledged on this connection.
    pub fn tls_active(&self) -> bool {
        self.tls_active
    }

    /// TLS is required and not yet active: options other than STARTTLS and ABORT are refused.
    fn tls_missing(&self) -> bool {
        self.cfg.tls == TlsPolicy::Required && !self.tls_active
    }

    /// The 18-byte server greeting.
    pub fn greeting(&self) -> [u8; GREETING_LEN] {
        let mut g = [0u8; GREETING_LEN];
        g[0..8].copy_from_slice(&proto::NBDMAGIC.to_be_bytes());
        g[8..16].copy_from_slice(&proto::IHAVEOPT.to_be_bytes());
        let hf = handshake_flags::FIXED_NEWSTYLE | handshake_flags::NO_ZEROES;
        g[16..18].copy_from_slice(&hf.to_be_bytes());
        g
    }

    /// The first step after sending the greeting.
    pub fn first_step<E>(&self) -> Step<E> {
        Step::Need(CLIENT_FLAGS_LEN)
    }

    fn expected(&self) -> usize {
        match self.state {
            State::ClientFlags => CLIENT_FLAGS_LEN,
            State::OptHeader => OPTION_HEADER_LEN,
            State::OptPayload { len, .. } => len,
            State::Discarding { .. } | State::Finished => 0,
        }
    }

    /// Feeds the bytes the previous step asked for; appends replies to `out`.
    pub fn receive<C: ExportCatalog>(
        &mut self,
        input: &[u8],
        catalog: &C,
        out: &mut Vec<u8>,
    ) -> Result<Step<C::Export>, HandshakeError> {
        if let State::Finished = self.state {
            return Err(HandshakeError::Finished);
        }
        let expected = self.expected();
        if input.len() != expected {
            return Err(HandshakeError::UnexpectedInput {
                expected,
                got: input.len(),
            });
        }
        match self.state {
            State::ClientFlags => {
                let flags = be::u32_at(input, 0).unwrap_or(0);
                let known = client_flags::C_FIXED_NEWSTYLE | client_flags::C_NO_ZEROES;
                if flags & !known != 0 {
                    self.state = State::Finished;
                    return Err(HandshakeError::BadClientFlags(flags));
                }
                self.no_zeroes = flags & client_flags::C_NO_ZEROES != 0;
                self.state = State::OptHeader;
                Ok(Step::Need(OPTION_HEADER_LEN))
            }
            State::OptHeader => self.on_header(input, catalog, out),
            State::OptPayload { option, .. } => {
                self.state = State::OptHeader;
                self.on_option(option, input, catalog, out)
            }
            State::Discarding { option, reply } => {
                self.state = State::OptHeader;
                let msg = match reply {
                    rep::ERR_UNSUP => "option not supported",
                    rep::ERR_TLS_REQD => "TLS is required: send NBD_OPT_STARTTLS first",
                    _ => "option data too long",
                };
                reply_error(out, option, reply, msg);
                Ok(Step::Need(OPTION_HEADER_LEN))
            }
            State::Finished => Err(HandshakeError::Finished),
        }
    }

    fn finish<E>(&mut self, e: HandshakeError) -> Result<Step<E>, HandshakeError> {
        self.state = State::Finished;
        Err(e)
    }

    fn on_header<C: ExportCatalog>(
        &mut self,
        h: &[u8],
        catalog: &C,
        out: &mut Vec<u8>,
    ) -> Result<Step<C::Export>, HandshakeError> {
        let magic = be::u64_at(h, 0).unwrap_or(0);
        let option = be::u32_at(h, 8).unwrap_or(0);
        let len = be::u32_at(h, 12).unwrap_or(0);
        if magic != proto::IHAVEOPT {
            return self.finish(HandshakeError::BadOptionMagic(magic));
        }
        self.options_seen = self.options_seen.saturating_add(1);
        if self.options_seen > self.cfg.max_options {
            return self.finish(HandshakeError::TooManyOptions(self.cfg.max_options));
        }
        let known = matches!(
            option,
            opt::EXPORT_NAME
                | opt::ABORT
                | opt::LIST
                | opt::STARTTLS
                | opt::INFO
                | opt::GO
                | opt::STRUCTURED_REPLY
                | opt::LIST_META_CONTEXT
                | opt::SET_META_CONTEXT
        ) || (option == opt::EXTENDED_HEADERS && self.cfg.extended_headers);
        if !known || len > self.cfg.max_option_len {
            if option == opt::EXPORT_NAME || len > self.cfg.max_discard_len {
                // EXPORT_NAME cannot be answered with an error; giant options are a DoS.
                return self.finish(HandshakeError::OptionTooLong { option, len });
            }
            let reply = if option != opt::ABORT && self.tls_missing() {
                // Nothing is said about options before TLS beyond that it is required.
                rep::ERR_TLS_REQD
            } else if known {
                rep::ERR_TOO_BIG
            } else {
                rep::ERR_UNSUP
            };
            self.state = State::Discarding { option, reply };
            if len == 0 {
                return self.receive(&[], catalog, out);
            }
            return Ok(Step::Discard(u64::from(len)));
        }
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if len == 0 {
            return self.on_option(option, &[], catalog, out);
        }
        self.state = State::OptPayload { option, len };
        Ok(Step::Need(len))
    }

    fn on_option<C: ExportCatalog>(
        &mut self,
        option: u32,
        data: &[u8],
        catalog: &C,
        out: &mut Vec<u8>,
    ) -> Result<Step<C::Export>, HandshakeError> {
        let next = Ok(Step::Need(OPTION_HEADER_LEN));
        if catalog.shutting_down() {
            match option {
                opt::ABORT => {}
                opt::EXPORT_NAME => return self.finish(HandshakeError::ShuttingDown),
                _ => {
                    reply_error(out, option, rep::ERR_SHUTDOWN, "server is shutting down");
                    return next;
                }
            }
        }
        if self.tls_missing() {
            match option {
                opt::STARTTLS | opt::ABORT => {}
                opt::EXPORT_NAME => return self.finish(HandshakeError::TlsRequired),
                _ => {
                    reply_error(
                        out,
                        option,
                        rep::ERR_TLS_REQD,
                        "TLS is required: send NBD_OPT_STARTTLS first",
                    );
                    return next;
                }
            }
        }
        match option {
            opt::EXPORT_NAME => self.export_name(data, catalog, out),
            opt::ABORT => {
                reply(out, option, rep::ACK, &[]);
                self.state = State::Finished;
                Ok(Step::Close)
            }
            opt::LIST => {
                if !data.is_empty() {
                    reply_error(out, option, rep::ERR_INVALID, "NBD_OPT_LIST takes no data");
                    return next;
                }
                for (name, desc) in catalog.list() {
                    let mut item = Vec::with_capacity(4 + name.len() + desc.len());
                    item.extend_from_slice(&len_u32(name.len()).to_be_bytes());
                    item.extend_from_slice(name.as_bytes());
                    item.extend_from_slice(truncate_str(&desc).as_bytes());
                    reply(out, option, rep::SERVER, &item);
                }
                reply(out, option, rep::ACK, &[]);
                next
            }
            opt::STARTTLS => {
                if self.cfg.tls == TlsPolicy::Off {
                    reply_error(
                        out,
                        option,
                        rep::ERR_POLICY,
                        "TLS is not available on this server",
                    );
                } else if !data.is_empty() {
                    reply_error(out, option, rep::ERR_INVALID, "option takes no data");
                } else if self.tls_active {
                    reply_error(out, option, rep::ERR_INVALID, "TLS is already active");
                } else {
                    reply(out, option, rep::ACK, &[]);
                    // The protocol: whatever was negotiated in plain text is forgotten, so a
                    // man in the middle cannot have chosen it.
                    self.tls_active = true;
                    self.structured = false;
                    self.extended = false;
                    self.meta = None;
                    return Ok(Step::StartTls);
                }
                next
            }
            opt::INFO | opt::GO => self.info_go(option, data, catalog, out),
            opt::STRUCTURED_REPLY => {
                if !data.is_empty() {
                    reply_error(out, option, rep::ERR_INVALID, "option takes no data");
                } else if self.extended {
                    reply_error(
                        out,
                        option,
                        rep::ERR_INVALID,
                        "extended headers already negotiated",
                    );
                } else if self.structured {
                    reply_error(
                        out,
                        option,
                        rep::ERR_INVALID,
                        "structured replies already negotiated",
                    );
                } else {
                    self.structured = true;
                    reply(out, option, rep::ACK, &[]);
                }
                next
            }
            opt::EXTENDED_HEADERS => {
                if !data.is_empty() {
                    reply_error(out, option, rep::ERR_INVALID, "option takes no data");
                } else if self.extended {
                    reply_error(
                        out,
                        option,
                        rep::ERR_INVALID,
                        "extended headers already negotiated",
                    );
                } else {
                    self.extended = true;
                    reply(out, option, rep::ACK, &[]);
                }
                next
            }
            opt::LIST_META_CONTEXT | opt::SET_META_CONTEXT => {
                self.meta_context(option, data, catalog, out);
                next
            }
            _ => {
                reply_error(out, option, rep::ERR_UNSUP, "option not supported");
                next
            }
        }
    }

    fn mode(&self) -> ReplyMode {
        if self.extended {
            ReplyMode::Extended
        } else if self.structured {
            ReplyMode::Structured
        } else {
            ReplyMode::Simple
        }
    }

    fn negotiated<E>(&self, info: ExportInfo, export: E, knows_bs: bool) -> Negotiated<E> {
        let mode = self.mode();
        let base_allocation = match &self.meta {
            Some((name, id)) if *name == info.name && mode != ReplyMode::Simple => Some(*id),
            _ => None,
        };
        Negotiated {
            export,
            flags: info.transmission_flags(mode != ReplyMode::Simple),
            info,
            mode,
            base_allocation,
            client_knows_block_size: knows_bs,
        }
    }

    fn export_name<C: ExportCatalog>(
        &mut self,
        data: &[u8],
        catalog: &C,
        out: &mut Vec<u8>,
    ) -> Result<Step<C::Export>, HandshakeError> {
        if self.extended {
            return self.finish(HandshakeError::ExportNameAfterExtendedHeaders);
        }
        let name = String::from_utf8_lossy(data).into_owned();
        let found = std::str::from_utf8(data)
            .ok()
            .and_then(|n| catalog.lookup(n));
        let Some((info, export)) = found else {
            return self.finish(HandshakeError::UnknownExport(name));
        };
        let n = self.negotiated(info, export, false);
        out.extend_from_slice(&n.info.size.to_be_bytes());
        out.extend_from_slice(&n.flags.to_be_bytes());
        if !self.no_zeroes {
            out.extend_from_slice(&[0u8; 124]);
        }
        self.state = State::Finished;
        Ok(Step::Done(Box::new(n)))
    }

    fn info_go<C: ExportCatalog>(
        &mut self,
        option: u32,
        data: &[u8],
        catalog: &C,
        out: &mut Vec<u8>,
    ) -> Result<Step<C::Export>, HandshakeError> {
        let next = Ok(Step::Need(OPTION_HEADER_LEN));
        let Some(req) = parse_info_request(data) else {
            reply_error(out, option, rep::ERR_INVALID, "malformed INFO/GO request");
            return next;
        };
        let Some((info, export)) = catalog.lookup(req.name) else {
            reply_error(out, option, rep::ERR_UNKNOWN, "no such export");
            return next;
        };
        let flags = info.transmission_flags(self.mode() != ReplyMode::Simple);
        let mut item = Vec::with_capacity(16);
        item.extend_from_slice(&info::EXPORT.to_be_bytes());
        item.extend_from_slice(&info.size.to_be_bytes());
        item.extend_from_slice(&flags.to_be_bytes());
        reply(out, option, rep::INFO, &item);
        let mut knows_bs = false;
        let (mut sent_name, mut sent_desc) = (false, false);
        for code in req.requests() {
            match code {
                info::NAME if !sent_name => {
                    sent_name = true;
                    item.clear();
                    item.extend_from_slice(&info::NAME.to_be_bytes());
                    item.extend_from_slice(truncate_str(&info.name).as_bytes());
                    reply(out, option, rep::INFO, &item);
                }
                info::DESCRIPTION if !sent_desc && !info.description.is_empty() => {
                    sent_desc = true;
                    item.clear();
                    item.extend_from_slice(&info::DESCRIPTION.to_be_bytes());
                    item.extend_from_slice(truncate_str(&info.description).as_bytes());
                    reply(out, option, rep::INFO, &item);
                }
                info::BLOCK_SIZE => knows_bs = true,
                _ => {}
            }
        }
        // Block sizes go out whether asked or not: they are our real constraints.
        item.clear();
        item.extend_from_slice(&info::BLOCK_SIZE.to_be_bytes());
        item.extend_from_slice(&info.min_block.to_be_bytes());
        item.extend_from_slice(&info.preferred_block.to_be_bytes());
        item.extend_from_slice(&info.max_payload.to_be_bytes());
        reply(out, option, rep::INFO, &item);
        reply(out, option, rep::ACK, &[]);
        if option == opt::GO {
            let n = self.negotiated(info, export, knows_bs);
            self.state = State::Finished;
            return Ok(Step::Done(Box::new(n)));
        }
        next
    }

    fn meta_context<C: ExportCatalog>(
        &mut self,
        option: u32,
        data: &[u8],
        catalog: &C,
        out: &mut Vec<u8>,
    ) {
        if self.mode() == ReplyMode::Simple {
            reply_error(
                out,
                option,
                rep::ERR_INVALID,
                "structured replies not negotiated",
            );
            return;
        }
        let Some(req) = parse_meta_request(data) else {
            reply_error(
                out,
                option,
                rep::ERR_INVALID,
                "malformed meta context request",
            );
            return;
        };
        let Some((info, _)) = catalog.lookup(req.export) else {
            reply_error(out, option, rep::ERR_UNKNOWN, "no such export");
            return;
        };
        let list = option == opt::LIST_META_CONTEXT;
        let selected = if list && req.count == 0 {
            true
        } else {
            req.queries()
                .any(|q| q == proto::BASE_ALLOCATION || (list && q == "base:"))
        };
        if selected {
            let mut item = Vec::with_capacity(4 + proto::BASE_ALLOCATION.len());
            // LIST replies carry id 0 (reserved); SET replies the id used in BLOCK_STATUS.
            let id = if list { 0 } else { BASE_ALLOCATION_ID };
            item.extend_from_slice(&id.to_be_bytes());
            item.extend_from_slice(proto::BASE_ALLOCATION.as_bytes());
            reply(out, option, rep::META_CONTEXT, &item);
        }
        if !list {
            self.meta = selected.then(|| (info.name.clone(), BASE_ALLOCATION_ID));
        }
        reply(out, option, rep::ACK, &[]);
    }
}

/// Length of the client flags.
pub const CLIENT_FLAGS_LEN: usize = 4;

struct InfoRequest<'a> {
    name: &'a str,
    codes: &'a [u8],
}

impl InfoRequest<'_> {
    fn requests(&self) -> impl Iterator<Item = u16> + '_ {
        self.codes
            .chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
    }
}

fn parse_string(data: &[u8], at: usize) -> Option<(&str, usize)> {
    let len = usize::try_from(be::u32_at(data, at)?).ok()?;
    if len > proto::MAX_STRING_LEN {
        return None;
    }
    let start = at.checked_add(4)?;
    let end = start.checked_add(len)?;
    let s = std::str::from_utf8(data.get(start..end)?).ok()?;
    if s.contains('\0') {
        return None;
    }
    Some((s, end))
}

/// INFO/GO data: u32 name length, name, u16 count, count x u16 info codes (nothing else).
fn parse_info_request(data: &[u8]) -> Option<InfoRequest<'_>> {
    let (name, at) = parse_string(data, 0)?;
    let n = usize::from(be::u16_at(data, at)?);
    let codes = data.get(at + 2..)?;
    (codes.len() == n.checked_mul(2)?).then_some(InfoRequest { name, codes })
}

struct MetaRequest<'a> {
    export: &'a str,
    count: u32,
    queries: &'a [u8],
}

impl MetaRequest<'_> {
    fn queries(&self) -> impl Iterator<Item = &str> + '_ {
        let mut at = 0usize;
        std::iter::from_fn(move || {
            let (q, end) = parse_string(self.queries, at)?;
            at = end;
            Some(q)
        })
    }
}

/// Meta context data: u32 name length, name, u32 count, count x (u32 length, query).
/// Validates every query up front so that iteration later cannot stop early.
fn parse_meta_request(data: &[u8]) -> Option<MetaRequest<'_>> {
    let (export, at) = parse_string(data, 0)?;
    let count = be::u32_at(data, at)?;
    let queries = data.get(at + 4..)?;
    let mut pos = 0usize;
    for _ in 0..count {
        let (_, end) = parse_string(queries, pos)?;
        pos = end;
    }
    (pos == queries.len()).then_some(MetaRequest {
        export,
        count,
        queries,
    })
}

fn len_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Cuts a string to the protocol's 4096-byte maximum on a character boundary.
fn truncate_str(s: &str) -> &str {
    if s.len() <= proto::MAX_STRING_LEN {
        return s;
    }
    let mut end = proto::MAX_STRING_LEN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Appends one option reply.
pub fn reply(out: &mut Vec<u8>, option: u32, kind: u32, data: &[u8]) {
    out.extend_from_slice(&proto::OPT_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&len_u32(data.len()).to_be_bytes());
    out.extend_from_slice(data);
}

fn reply_error(out: &mut Vec<u8>, option: u32, kind: u32, msg: &str) {
    reply(out, option, kind, msg.as_bytes());
}
