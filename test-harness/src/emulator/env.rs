//! The `env` imports: proxy-wasm ABI 0.2.1 host functions, per profile.

use std::collections::BTreeSet;

use wasmtime::{Caller, Linker};

use super::abi::{self, Status};
use super::memory::{give, read, read_string, status_of, write_u32, write_u64, Fail, HostResult};
use super::profile::Profile;
use super::state::{Callout, Flow, LocalReply, LogLine, MetricKind, Scope, VmState};

type C<'a> = Caller<'a, VmState>;

/// Counts the call, runs `body`, turns its result into the guest's status.
fn run(
    caller: &mut C<'_>,
    name: &str,
    body: impl FnOnce(&mut C<'_>) -> HostResult<()>,
) -> wasmtime::Result<i32> {
    caller.data_mut().count(name);
    // An injected fault: the call fails as the host would report it, doing nothing.
    if let Some(status) = caller.data().faults.get(name) {
        return Ok(status.code());
    }
    status_of(body(caller))
}

/// Registers every `env` function the emulator implements; returns their names.
pub fn register(linker: &mut Linker<VmState>) -> wasmtime::Result<BTreeSet<&'static str>> {
    let mut names = BTreeSet::new();
    macro_rules! def {
        ($name:literal, |$c:ident $(, $arg:ident : $ty:ty)*| $body:expr) => {
            linker.func_wrap("env", $name, |mut $c: C<'_>, $($arg: $ty),*| -> wasmtime::Result<i32> {
                run(&mut $c, $name, |$c| $body)
            })?;
            names.insert($name);
        };
    }
    def!("proxy_log", |c, level: i32, ptr: i32, len: i32| log(c, level, ptr, len));
    def!("proxy_get_current_time_nanoseconds", |c, ptr: i32| current_time(c, ptr));
    def!("proxy_set_tick_period_milliseconds", |c, period: i32| set_tick_period(c, period));
    def!("proxy_get_buffer_bytes", |c, ty: i32, start: i32, max: i32, pp: i32, sp: i32| {
        get_buffer_bytes(c, ty, start, max, pp, sp)
    });
    def!("proxy_get_header_map_value", |c, ty: i32, k: i32, kl: i32, pp: i32, sp: i32| {
        get_header(c, ty, k, kl, pp, sp)
    });
    def!("proxy_get_header_map_pairs", |c, ty: i32, pp: i32, sp: i32| get_header_pairs(c, ty, pp, sp));
    def!("proxy_set_header_map_pairs", |c, ty: i32, p: i32, l: i32| set_header_pairs(c, ty, p, l));
    def!("proxy_replace_header_map_value", |c, ty: i32, k: i32, kl: i32, v: i32, vl: i32| {
        write_header(c, ty, k, kl, Some((v, vl)), true)
    });
    def!("proxy_add_header_map_value", |c, ty: i32, k: i32, kl: i32, v: i32, vl: i32| {
        write_header(c, ty, k, kl, Some((v, vl)), false)
    });
    def!("proxy_remove_header_map_value", |c, ty: i32, k: i32, kl: i32| write_header(
        c, ty, k, kl, None, true
    ));
    def!("proxy_send_local_response", |c,
                                       st: i32,
                                       d: i32,
                                       dl: i32,
                                       b: i32,
                                       bl: i32,
                                       h: i32,
                                       hl: i32,
                                       _g: i32| {
        send_local_response(c, st, (d, dl), (b, bl), (h, hl))
    });
    def!("proxy_get_shared_data", |c, k: i32, kl: i32, pp: i32, sp: i32, cp: i32| get_shared(
        c, k, kl, pp, sp, cp
    ));
    def!("proxy_set_shared_data", |c, k: i32, kl: i32, v: i32, vl: i32, cas: i32| set_shared(
        c, k, kl, v, vl, cas
    ));
    def!("proxy_get_property", |c, p: i32, pl: i32, pp: i32, sp: i32| get_property(c, p, pl, pp, sp));
    def!("proxy_set_property", |c, p: i32, pl: i32, v: i32, vl: i32| set_property(c, p, pl, v, vl));
    def!("proxy_define_metric", |c, ty: i32, n: i32, nl: i32, ip: i32| define_metric(c, ty, n, nl, ip));
    def!("proxy_increment_metric", |c, id: i32, offset: i64| change_metric(c, id, offset, true));
    def!("proxy_record_metric", |c, id: i32, value: i64| change_metric(c, id, value, false));
    def!("proxy_get_metric", |c, id: i32, ptr: i32| get_metric(c, id, ptr));
    def!("proxy_set_effective_context", |c, id: i32| set_effective_context(c, id));
    def!("proxy_continue_stream", |c, ty: i32| continue_stream(c, ty));
    def!("proxy_http_call", |c,
                             u: i32,
                             ul: i32,
                             h: i32,
                             hl: i32,
                             b: i32,
                             bl: i32,
                             _t: i32,
                             _tl: i32,
                             timeout: i32,
                             tp: i32| {
        http_call(c, (u, ul), (h, hl), (b, bl), timeout, tp)
    });
    Ok(names)
}

fn profile(c: &C<'_>) -> Profile {
    c.data().profile
}

fn log(c: &mut C<'_>, level: i32, ptr: i32, len: i32) -> HostResult<()> {
    let message = read_string(c, ptr, len)?;
    c.data_mut().logs.push(LogLine { level: Some(level as u32), message });
    Ok(())
}

fn current_time(c: &mut C<'_>, ptr: i32) -> HostResult<()> {
    match profile(c) {
        Profile::Full => {
            let now = c.data().now_ns();
            write_u64(c, ptr, now)
        }
        Profile::ApisixLike => Err(Status::Unimplemented.into()),
        Profile::ApisixNoop => Ok(()),
    }
}

fn set_tick_period(c: &mut C<'_>, period: i32) -> HostResult<()> {
    match profile(c) {
        Profile::Full => {
            let state = c.data_mut();
            let period = period as u32;
            state.tick_period_ms = period;
            state.next_tick_ns = (period != 0)
                .then(|| state.now_ns().saturating_add(u64::from(period).saturating_mul(1_000_000)));
            Ok(())
        }
        Profile::ApisixLike => Err(Status::Unimplemented.into()),
        Profile::ApisixNoop => Ok(()),
    }
}

fn get_buffer_bytes(c: &mut C<'_>, ty: i32, start: i32, max: i32, pp: i32, sp: i32) -> HostResult<()> {
    let apisix = profile(c).is_apisix();
    let state = c.data();
    let data: Vec<u8> = match ty {
        abi::buffer::PLUGIN_CONFIGURATION => state.plugin_configuration.clone(),
        abi::buffer::VM_CONFIGURATION if !apisix => state.vm_configuration.clone(),
        abi::buffer::HTTP_CALL_RESPONSE_BODY => {
            if apisix && state.target_stream().is_none() {
                return Err(Status::BadArgument.into());
            }
            match &state.answering {
                Some(Some(reply)) => reply.body.clone(),
                _ => Vec::new(),
            }
        }
        abi::buffer::HTTP_REQUEST_BODY | abi::buffer::HTTP_RESPONSE_BODY if !apisix => Vec::new(),
        _ if apisix => return Err(Status::Unimplemented.into()),
        _ => return Err(Status::BadArgument.into()),
    };
    if data.is_empty() {
        return Err(Status::NotFound.into());
    }
    // Configurations are handed over whole; other buffers honour start and size.
    let slice = if ty == abi::buffer::PLUGIN_CONFIGURATION || ty == abi::buffer::VM_CONFIGURATION {
        data
    } else {
        let start = usize::try_from(start).map_err(|_| Status::BadArgument)?;
        if start >= data.len() || (apisix && max <= 0) {
            return Err(Status::BadArgument.into());
        }
        let max = usize::try_from(max as u32).map_err(|_| Status::BadArgument)?;
        let end = start.saturating_add(max).min(data.len());
        data.get(start..end).unwrap_or_default().to_vec()
    };
    give(c, &slice, pp, sp)
}

fn lower(name: &str) -> String {
    name.to_ascii_lowercase()
}

fn get_header(c: &mut C<'_>, ty: i32, k: i32, kl: i32, pp: i32, sp: i32) -> HostResult<()> {
    let key = lower(&read_string(c, k, kl)?);
    let state = c.data();
    if state.profile.is_apisix() && state.target_stream().is_none() {
        return Err(Status::BadArgument.into());
    }
    let map = state.map(ty)?;
    let value = map.iter().find(|(n, _)| n.eq_ignore_ascii_case(&key)).map(|(_, v)| v.clone());
    match value {
        Some(value) => give(c, &value, pp, sp),
        None => Err(Status::NotFound.into()),
    }
}

fn get_header_pairs(c: &mut C<'_>, ty: i32, pp: i32, sp: i32) -> HostResult<()> {
    let state = c.data();
    if state.profile.is_apisix() && state.target_stream().is_none() {
        return Err(Status::BadArgument.into());
    }
    let encoded = abi::encode_map(state.map(ty)?);
    give(c, &encoded, pp, sp)
}

fn set_header_pairs(c: &mut C<'_>, ty: i32, p: i32, l: i32) -> HostResult<()> {
    if profile(c).is_apisix() {
        return Err(Status::Unimplemented.into());
    }
    let bytes = read(c, p, l)?;
    let headers = abi::decode_map(&bytes).ok_or(Status::SerializationFailure)?;
    let map = c.data_mut().map_mut(ty)?;
    *map = headers.into_iter().map(|(n, v)| (lower(&n), v)).collect();
    Ok(())
}

/// Replace (every value of `key` becomes one `value`), add, or (no value) remove.
fn write_header(
    c: &mut C<'_>,
    ty: i32,
    k: i32,
    kl: i32,
    value: Option<(i32, i32)>,
    replace: bool,
) -> HostResult<()> {
    let key = lower(&read_string(c, k, kl)?);
    let value = match value {
        // Values are bytes: a filter may write any (and a client may send any).
        Some((ptr, len)) => Some(read(c, ptr, len)?),
        None => None,
    };
    let map = c.data_mut().map_mut(ty)?;
    if replace {
        map.retain(|(n, _)| !n.eq_ignore_ascii_case(&key));
    }
    if let Some(value) = value {
        map.push((key, value));
    }
    Ok(())
}

fn send_local_response(
    c: &mut C<'_>,
    status: i32,
    details: (i32, i32),
    body: (i32, i32),
    headers: (i32, i32),
) -> HostResult<()> {
    let details = read_string(c, details.0, details.1)?;
    let body = read(c, body.0, body.1)?;
    let headers = if headers.1 == 0 { Vec::new() } else { read(c, headers.0, headers.1)? };
    let headers = abi::decode_map(&headers).ok_or(Status::BadArgument)?;
    let state = c.data_mut();
    let id = state.target_stream().ok_or(Status::BadArgument)?;
    let stream = state.streams.get_mut(&id).ok_or(Status::BadArgument)?;
    let status = u16::try_from(status).map_err(|_| Status::BadArgument)?;
    let headers = headers.into_iter().map(|(n, v)| (lower(&n), v)).collect();
    stream.flow = Flow::Replied(LocalReply { status, details, headers, body });
    Ok(())
}

fn get_shared(c: &mut C<'_>, k: i32, kl: i32, pp: i32, sp: i32, cp: i32) -> HostResult<()> {
    match profile(c) {
        Profile::Full => {
            let key = read(c, k, kl)?;
            let entry = c.data().shared.data.borrow().get(&key).cloned();
            let entry = entry.ok_or(Status::NotFound)?;
            give(c, &entry.value, pp, sp)?;
            write_u32(c, cp, entry.cas)
        }
        Profile::ApisixLike => Err(Status::Unimplemented.into()),
        Profile::ApisixNoop => Ok(()),
    }
}

fn set_shared(c: &mut C<'_>, k: i32, kl: i32, v: i32, vl: i32, cas: i32) -> HostResult<()> {
    match profile(c) {
        Profile::Full => {
            let key = read(c, k, kl)?;
            let value = read(c, v, vl)?;
            let result = c.data().shared.data.borrow_mut().set(&key, &value, cas as u32);
            result.map_err(Fail::Status)
        }
        Profile::ApisixLike => Err(Status::Unimplemented.into()),
        Profile::ApisixNoop => Ok(()),
    }
}

/// A property path in the ABI encoding: segments separated by NUL, with or without a
/// trailing NUL.
pub fn decode_path(bytes: &[u8]) -> Vec<String> {
    let bytes = bytes.strip_suffix(&[0]).unwrap_or(bytes);
    bytes.split(|&b| b == 0).map(|s| String::from_utf8_lossy(s).into_owned()).collect()
}

fn get_property(c: &mut C<'_>, p: i32, pl: i32, pp: i32, sp: i32) -> HostResult<()> {
    let raw = read(c, p, pl)?;
    let state = c.data();
    let value = if state.profile.is_apisix() {
        // Nginx variables: the path is one variable name, looked up byte for byte.
        if raw == b"plugin_root_id" {
            Some(b"nhi-guard".to_vec())
        } else {
            let id = state.target_stream().ok_or(Status::BadArgument)?;
            let name = lower(&String::from_utf8_lossy(&raw));
            state.streams.get(&id).and_then(|s| s.properties.get(&vec![name]).cloned())
        }
    } else {
        let path = decode_path(&raw);
        let from_stream =
            state.target_stream().and_then(|id| state.streams.get(&id)?.properties.get(&path).cloned());
        from_stream.or_else(|| state.properties.get(&path).cloned())
    };
    match value {
        Some(value) => give(c, &value, pp, sp),
        None => Err(Status::NotFound.into()),
    }
}

fn set_property(c: &mut C<'_>, p: i32, pl: i32, v: i32, vl: i32) -> HostResult<()> {
    let raw = read(c, p, pl)?;
    let value = read(c, v, vl)?;
    let state = c.data_mut();
    if state.profile.is_apisix() {
        let id = state.target_stream().ok_or(Status::BadArgument)?;
        let name = lower(&String::from_utf8_lossy(&raw));
        let stream = state.streams.get_mut(&id).ok_or(Status::BadArgument)?;
        if !stream.writable_variables.contains(&name) {
            return Err(Status::NotFound.into());
        }
        stream.set_properties.insert(name, value);
        return Ok(());
    }
    let name = decode_path(&raw).join(".");
    match state.target_stream() {
        Some(id) => {
            if let Some(stream) = state.streams.get_mut(&id) {
                stream.set_properties.insert(name, value);
            }
        }
        None => {
            state.root_set_properties.insert(name, value);
        }
    }
    Ok(())
}

fn define_metric(c: &mut C<'_>, ty: i32, n: i32, nl: i32, ip: i32) -> HostResult<()> {
    match profile(c) {
        Profile::Full => {
            let kind = match ty {
                abi::metric::COUNTER => MetricKind::Counter,
                abi::metric::GAUGE => MetricKind::Gauge,
                abi::metric::HISTOGRAM => MetricKind::Histogram,
                _ => return Err(Status::BadArgument.into()),
            };
            let name = read_string(c, n, nl)?;
            let id = c.data().shared.metrics.borrow_mut().define(kind, &name);
            write_u32(c, ip, id)
        }
        Profile::ApisixLike => write_u32(c, ip, 0),
        Profile::ApisixNoop => Err(Status::Unimplemented.into()),
    }
}

fn change_metric(c: &mut C<'_>, id: i32, amount: i64, increment: bool) -> HostResult<()> {
    match profile(c) {
        Profile::Full => {
            let shared = c.data().shared.clone();
            let mut metrics = shared.metrics.borrow_mut();
            let metric = metrics.get_mut(id as u32).ok_or(Status::NotFound)?;
            match (metric.kind, increment) {
                (MetricKind::Counter, true) if amount < 0 => return Err(Status::BadArgument.into()),
                (MetricKind::Counter | MetricKind::Gauge, true) => {
                    metric.value = metric.value.saturating_add(amount)
                }
                (MetricKind::Histogram, true) => return Err(Status::BadArgument.into()),
                (MetricKind::Counter, false) => metric.value = metric.value.max(amount),
                (MetricKind::Gauge, false) => metric.value = amount,
                (MetricKind::Histogram, false) => metric.samples.push(amount as u64),
            }
            Ok(())
        }
        Profile::ApisixLike => Ok(()),
        Profile::ApisixNoop => Err(Status::Unimplemented.into()),
    }
}

fn get_metric(c: &mut C<'_>, id: i32, ptr: i32) -> HostResult<()> {
    match profile(c) {
        Profile::Full => {
            let value = c.data().shared.metrics.borrow_mut().get_mut(id as u32).map(|m| m.value);
            let value = value.ok_or(Status::NotFound)?;
            write_u64(c, ptr, value as u64)
        }
        Profile::ApisixLike => write_u64(c, ptr, 0),
        Profile::ApisixNoop => Err(Status::Unimplemented.into()),
    }
}

fn set_effective_context(c: &mut C<'_>, id: i32) -> HostResult<()> {
    let state = c.data_mut();
    if state.profile.is_apisix() {
        return Ok(());
    }
    let id = id as u32;
    let live = id == state.root_id || state.streams.get(&id).is_some_and(|s| !s.finished);
    if !live {
        return Err(Status::BadArgument.into());
    }
    state.effective = id;
    Ok(())
}

fn continue_stream(c: &mut C<'_>, ty: i32) -> HostResult<()> {
    let state = c.data_mut();
    if state.profile.is_apisix() {
        return Ok(());
    }
    let id = state.target_stream().ok_or(Status::BadArgument)?;
    let stream = state.streams.get_mut(&id).ok_or(Status::BadArgument)?;
    if ty == abi::stream::HTTP_REQUEST && stream.flow == Flow::Paused {
        stream.flow = Flow::Continued;
    }
    Ok(())
}

fn http_call(
    c: &mut C<'_>,
    upstream: (i32, i32),
    headers: (i32, i32),
    body: (i32, i32),
    timeout: i32,
    token_ptr: i32,
) -> HostResult<()> {
    let upstream = read_string(c, upstream.0, upstream.1)?;
    let headers = read(c, headers.0, headers.1)?;
    let headers = abi::decode_map(&headers).ok_or(Status::BadArgument)?;
    let body = read(c, body.0, body.1)?;
    let state = c.data_mut();
    let context = if state.profile.is_apisix() {
        let Scope::Request(id, _) = state.scope else {
            let during = match state.scope {
                Scope::Root(name) => name,
                _ => "no callback",
            };
            state.violations.push(format!(
                "proxy_http_call to {upstream:?} during {during}: APISIX makes callouts only for the request \
                 being processed, and during root callbacks it dereferences a NULL request (nginx crashes)"
            ));
            return Err(Status::BadArgument.into());
        };
        if state.callouts.values().any(|callout| callout.context == id) {
            return Err(Status::InternalFailure.into()); // "multiple calls are not supported"
        }
        let host_port = upstream.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok() && !host.contains(['/', ' '])
        });
        if !host_port {
            return Err(Status::BadArgument.into()); // ngx_parse_url: not host:port
        }
        id
    } else {
        let known =
            state.shared.clusters.borrow().as_ref().is_none_or(|clusters| clusters.contains(&upstream));
        if !known {
            return Err(Status::BadArgument.into()); // no such cluster
        }
        for required in [":method", ":path", ":authority"] {
            if !headers.iter().any(|(n, _)| n == required) {
                return Err(Status::BadArgument.into());
            }
        }
        state.effective
    };
    let token = state.next_token;
    state.next_token = state.next_token.wrapping_add(1);
    let timeout_ms = timeout as u32;
    let deadline_ns = state.now_ns().saturating_add(u64::from(timeout_ms).saturating_mul(1_000_000));
    state
        .callouts
        .insert(token, Callout { token, context, upstream, headers, body, timeout_ms, deadline_ns });
    write_u32(c, token_ptr, token)
}

#[cfg(test)]
mod tests {
    use super::decode_path;

    #[test]
    fn property_paths_are_nul_separated_with_or_without_a_trailing_nul() {
        assert_eq!(decode_path(b"source\0address"), ["source", "address"]);
        assert_eq!(decode_path(b"source\0address\0"), ["source", "address"]);
        assert_eq!(decode_path(b"remote_addr"), ["remote_addr"]);
    }
}
