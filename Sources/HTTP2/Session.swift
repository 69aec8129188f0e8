import CNGHTTP2
import CLinuxShim
import Reactor
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

public typealias StreamID = Int32

/// A header block as it arrived: lower-case names, in order.
public struct HeaderList: Sendable {
    public var fields: [(name: String, value: String)] = []
    /// Bytes the list counts for, as SETTINGS_MAX_HEADER_LIST_SIZE counts them (RFC 9113 6.5.2).
    public private(set) var size = 0
    public init(_ fields: [(name: String, value: String)] = []) {
        self.fields = fields
        size = fields.reduce(0) { $0 + $1.name.utf8.count + $1.value.utf8.count + 32 }
    }
    public subscript(_ name: String) -> String? { fields.first { $0.name == name }?.value }
    /// Every value of `name`, in order.
    public func all(_ name: String) -> [String] { fields.filter { $0.name == name }.map(\.value) }

    mutating func append(_ name: String, _ value: String, size fieldSize: Int) {
        fields.append((name, value))
        size += fieldSize
    }
}

/// What a session tells the layer above. Every call comes from inside `receive` or `produce`.
public protocol SessionDelegate: AnyObject {
    /// A request (server side) or response (client side) header block.
    func session(_ session: Session, headers: HeaderList, stream: StreamID, endStream: Bool)
    func session(_ session: Session, data: UnsafeRawBufferPointer, stream: StreamID)
    /// The peer ended its side of the stream (END_STREAM on DATA, or on trailers).
    func session(_ session: Session, endOfStream stream: StreamID)
    /// The stream is gone: `errorCode` 0 when both sides ended, else the RST_STREAM code.
    func session(_ session: Session, closed stream: StreamID, errorCode: UInt32)
}

public struct SessionSettings: Sendable {
    /// The window the peer may fill per stream before the bytes have left for their destination:
    /// the bound on what one stream can make this side buffer.
    public var streamWindow: Int32 = 2 << 20
    public var connectionWindow: Int32 = 64 << 20
    public var maxFrameSize: Int32 = 1 << 20
    /// How many streams the peer may have open at once (the relay's `--max-streams-per-connection`).
    public var maxConcurrentStreams: UInt32 = 16_384
    /// The largest header list accepted (`--max-header-list-size`): advertised as
    /// SETTINGS_MAX_HEADER_LIST_SIZE and enforced while decoding, before any field is kept.
    public var maxHeaderListSize: UInt32 = 64 * 1024
    /// Server side: RST_STREAM frames a client may send, `burst` at once and `rate` a second after
    /// that, before nghttp2 ends the connection (its rapid-reset protection). nghttp2's own
    /// default (1,000, then 33 a second) ends a client whose local applications reset connections
    /// more often than that, a normal thing for a port-forward client: the relay's
    /// `--stream-reset-rate` and `--stream-reset-burst`.
    public var streamResetBurst: UInt64 = 10_000
    public var streamResetRate: UInt64 = 5_000

    /// Defaults, or the tuning knobs PORTFORWARD_STREAM_WINDOW, PORTFORWARD_CONNECTION_WINDOW
    /// and PORTFORWARD_FRAME_SIZE (bytes) when set: docs/PERFORMANCE.md says how they were chosen.
    public init() {
        func knob(_ name: String) -> Int32? {
            guard let text = getenv(name), let value = Int32(String(cString: text)), value > 0 else { return nil }
            return value
        }
        if let value = knob("PORTFORWARD_STREAM_WINDOW") { streamWindow = min(value, Int32.max) }
        if let value = knob("PORTFORWARD_CONNECTION_WINDOW") { connectionWindow = value }
        if let value = knob("PORTFORWARD_FRAME_SIZE") { maxFrameSize = min(max(value, 16384), 16_777_215) }
    }

    public var entries: [nghttp2_settings_entry] {
        [
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS.rawValue), value: maxConcurrentStreams),
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE.rawValue), value: UInt32(streamWindow)),
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_MAX_FRAME_SIZE.rawValue), value: UInt32(maxFrameSize)),
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE.rawValue), value: maxHeaderListSize),
        ]
    }
}

public struct HTTP2Error: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
    init(_ call: String, _ code: Int) {
        description = "\(call): \(String(cString: nghttp2_strerror(Int32(code))))"
    }
}

/// One nghttp2 session. It does no I/O: bytes go in with `receive`, frames come out into an
/// `OutputQueue` with `produce`; the `Connection` moves them.
public final class Session {
    public enum Role { case client, server }

    public let role: Role
    public weak var delegate: SessionDelegate?
    let raw: OpaquePointer
    private let cache: OpaquePointer?
    var output: OutputQueue?
    private var pendingHeaders: [StreamID: HeaderList] = [:]
    /// Streams whose header block went over `maxHeaderListSize`: the rest of it is decoded (HPACK
    /// state must stay in step) but not kept.
    private var oversized: Set<StreamID> = []
    private let maxHeaderListSize: Int
    /// One line per protocol problem the session handled itself (an oversized header list).
    public var log: ((String) -> Void)?
    /// A PING this side sent was acknowledged.
    public var onPingAcknowledged: (() -> Void)?
    /// The peer's GOAWAY, when one came with an error: why the session ended, in one phrase.
    public fileprivate(set) var peerGoaway: String?
    /// The peer sent GOAWAY (with or without an error): it takes no new stream on this session.
    public var onGoaway: (() -> Void)?

    /// An HTTP/2 error code's name as nghttp2 gives it (`CANCEL`, `INTERNAL_ERROR`, ...).
    public static func errorName(_ code: UInt32) -> String { String(cString: nghttp2_http2_strerror(code)) }
    /// nghttp2 holds a stream's body as a raw pointer: the session keeps it alive until the
    /// stream closes.
    private var bodies: [StreamID: DataSource] = [:]
    /// The first fatal error (out of memory) of an nghttp2 call made where nothing can throw
    /// (`resume`, `consume`, `reset`, `ping`, `terminate`, a callback): from then on `receive` and
    /// `produce` throw it, so the connection closes instead of going on with a broken session.
    public private(set) var failure: HTTP2Error?

    public init(role: Role, settings: SessionSettings = SessionSettings()) throws {
        self.role = role
        maxHeaderListSize = Int(settings.maxHeaderListSize)
        var callbacks: OpaquePointer?
        let made = nghttp2_session_callbacks_new(&callbacks)
        guard made == 0 else { throw HTTP2Error("nghttp2_session_callbacks_new", Int(made)) }
        defer { nghttp2_session_callbacks_del(callbacks) }
        nghttp2_session_callbacks_set_on_begin_headers_callback(callbacks, onBeginHeaders)
        nghttp2_session_callbacks_set_on_header_callback(callbacks, onHeader)
        nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks, onFrameReceive)
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks, onDataChunk)
        nghttp2_session_callbacks_set_on_stream_close_callback(callbacks, onStreamClose)
        nghttp2_session_callbacks_set_send_data_callback(callbacks, onSendData)
        nghttp2_session_callbacks_set_data_source_read_length_callback(callbacks, onReadLength)
        nghttp2_session_callbacks_set_error_callback2(callbacks, onError)
        nghttp2_session_callbacks_set_on_frame_send_callback(callbacks, onFrameSend)
        nghttp2_session_callbacks_set_on_frame_not_send_callback(callbacks, onFrameNotSend)

        var options: OpaquePointer?
        let madeOptions = nghttp2_option_new(&options)
        guard madeOptions == 0 else { throw HTTP2Error("nghttp2_option_new", Int(madeOptions)) }
        defer { nghttp2_option_del(options) }
        // Windows open only when bytes have left for their destination (Session.consume).
        nghttp2_option_set_no_auto_window_update(options, 1)
        nghttp2_option_set_peer_max_concurrent_streams(options, settings.maxConcurrentStreams)
        // Closed streams are kept only for RFC 7540 priorities, which nobody here uses: without
        // this, a server session holds up to MAX_CONCURRENT_STREAMS of them (about 400 B each).
        nghttp2_option_set_no_closed_streams(options, 1)
        if role == .server {
            nghttp2_option_set_stream_reset_rate_limit(options, settings.streamResetBurst, settings.streamResetRate)
        }

        var session: OpaquePointer?
        let placeholder = UnsafeMutableRawPointer(bitPattern: 1)
        // nghttp2 allocates per WINDOW_UPDATE and regrows its frame buffer for large DATA
        // frames: a cache of freed blocks makes the steady state allocation-free.
        cache = pf_block_cache_new()
        var memory = nghttp2_mem(mem_user_data: UnsafeMutableRawPointer(cache),
                                 malloc: pf_cache_malloc, free: pf_cache_free,
                                 calloc: pf_cache_calloc, realloc: pf_cache_realloc)
        let result = role == .server
            ? nghttp2_session_server_new3(&session, callbacks, placeholder, options, &memory)
            : nghttp2_session_client_new3(&session, callbacks, placeholder, options, &memory)
        guard result == 0, let session else { throw HTTP2Error("nghttp2_session_new", Int(result)) }
        raw = session
        nghttp2_session_set_user_data(raw, Unmanaged.passUnretained(self).toOpaque())

        // Settings nghttp2 refuses (a frame size out of range, a negative window) are the
        // caller's mistake: a session that silently kept the defaults would advertise other
        // limits than the ones asked for.
        var entries = settings.entries
        let submitted = nghttp2_submit_settings(raw, UInt8(NGHTTP2_FLAG_NONE.rawValue), &entries, entries.count)
        guard submitted == 0 else { throw HTTP2Error("nghttp2_submit_settings", Int(submitted)) }
        let windowSet = nghttp2_session_set_local_window_size(raw, UInt8(NGHTTP2_FLAG_NONE.rawValue), 0, settings.connectionWindow)
        guard windowSet == 0 else { throw HTTP2Error("nghttp2_session_set_local_window_size", Int(windowSet)) }
    }

    deinit {
        nghttp2_session_del(raw)
        pf_block_cache_delete(cache)
    }

    // MARK: input and output

    /// Feeds received bytes; delegate calls happen inside.
    public func receive(_ bytes: UnsafeRawBufferPointer) throws {
        if let failure { throw failure }
        guard let base = bytes.baseAddress, bytes.count > 0 else { return }
        let result = nghttp2_session_mem_recv(raw, base.assumingMemoryBound(to: UInt8.self), bytes.count)
        if let failure { throw failure }
        if result < 0 { throw HTTP2Error("nghttp2_session_mem_recv", result) }
    }

    /// Serializes pending frames into `queue` until it holds `limit` bytes or nothing is left.
    public func produce(into queue: OutputQueue, limit: Int) throws {
        if let failure { throw failure }
        output = queue
        defer { output = nil }
        while queue.queuedBytes < limit {
            var data: UnsafePointer<UInt8>?
            let count = nghttp2_session_mem_send(raw, &data)
            if let failure { throw failure }
            if count < 0 { throw HTTP2Error("nghttp2_session_mem_send", count) }
            if count == 0 { break }
            queue.append(bytes: data!, count: count)
        }
    }

    public var wantsRead: Bool { nghttp2_session_want_read(raw) != 0 }
    public var wantsWrite: Bool { nghttp2_session_want_write(raw) != 0 }

    // MARK: streams

    /// Opens a stream (client side) whose request body comes from `body`.
    public func submitRequest(_ headers: [(String, String)], body: DataSource?) throws -> StreamID {
        let id = withHeaderVector(headers) { vector, count -> Int32 in
            if let body {
                var provider = dataProvider(body)
                return nghttp2_submit_request(raw, nil, vector, count, &provider, nil)
            }
            return nghttp2_submit_request(raw, nil, vector, count, nil, nil)
        }
        if id < 0 { throw HTTP2Error("nghttp2_submit_request", Int(id)) }
        if let body { bodies[id] = body }
        return id
    }

    /// Answers a stream (server side); no body means END_STREAM on the HEADERS frame.
    public func submitResponse(_ stream: StreamID, headers: [(String, String)], body: DataSource?) throws {
        let result = withHeaderVector(headers) { vector, count -> Int32 in
            if let body {
                var provider = dataProvider(body)
                return nghttp2_submit_response(raw, stream, vector, count, &provider)
            }
            return nghttp2_submit_response(raw, stream, vector, count, nil)
        }
        if result < 0 { throw HTTP2Error("nghttp2_submit_response", Int(result)) }
        if let body { bodies[stream] = body }
    }

    /// The body of `stream` has more bytes ready (or has ended). False when nghttp2 was not
    /// waiting for it: the stream is gone, or its body was not deferred (nghttp2 asks again by
    /// itself), both normal for a source that says so whenever bytes arrive.
    @discardableResult
    public func resume(_ stream: StreamID) -> Bool {
        let result = nghttp2_session_resume_data(raw, stream)
        if result == NGHTTP2_ERR_INVALID_ARGUMENT.rawValue { return false }
        return check("nghttp2_session_resume_data", result, stream: stream)
    }

    /// `count` received bytes of `stream` have left for their destination: open its window.
    public func consume(_ stream: StreamID, _ count: Int) {
        guard count > 0 else { return }
        // nghttp2 keeps consumed bytes beyond what arrived as credit (and past 2^31 ends the
        // session with FLOW_CONTROL_ERROR): a caller's miscount would let the peer overrun
        // the window that bounds what a stream can make this side hold.
        let unconsumed = nghttp2_session_get_stream_effective_recv_data_length(raw, stream)
        var count = count
        if unconsumed >= 0 && count > Int(unconsumed) {
            log?("stream \(stream): \(count) bytes consumed, but only \(unconsumed) received and not yet consumed")
            count = Int(unconsumed)
            if count == 0 { return }
        }
        check("nghttp2_session_consume_stream", nghttp2_session_consume_stream(raw, stream, count), stream: stream)
    }

    public func reset(_ stream: StreamID, code: UInt32 = NGHTTP2_CANCEL.rawValue) {
        check("nghttp2_submit_rst_stream", nghttp2_submit_rst_stream(raw, UInt8(NGHTTP2_FLAG_NONE.rawValue), stream, code),
              stream: stream)
    }

    /// Frames nghttp2 holds for sending (HEADERS, RST_STREAM, SETTINGS, PING and WINDOW_UPDATE; not
    /// DATA, which is pulled from its source): what a peer that does not read makes this side hold.
    public var queuedFrames: Int { nghttp2_session_get_outbound_queue_size(raw) }

    /// Sends a PING; `onPingAcknowledged` says when its answer came.
    public func ping() {
        check("nghttp2_submit_ping", nghttp2_submit_ping(raw, UInt8(NGHTTP2_FLAG_NONE.rawValue), nil))
    }

    /// GOAWAY naming the last stream the peer opened: no new stream is taken, and the session
    /// ends when the streams open now have (a graceful shutdown).
    public func drain() {
        let result = nghttp2_submit_goaway(raw, UInt8(NGHTTP2_FLAG_NONE.rawValue), nghttp2_session_get_last_proc_stream_id(raw),
                                           NGHTTP2_NO_ERROR.rawValue, nil, 0)
        if result != 0 { terminate() }
    }

    /// GOAWAY; the session wants no more I/O once it is sent.
    public func terminate(code: UInt32 = NGHTTP2_NO_ERROR.rawValue) {
        check("nghttp2_session_terminate_session", nghttp2_session_terminate_session(raw, code))
    }

    /// Takes over stream 1 after an HTTP/1.1 Upgrade (RFC 7540 section 3.2).
    public func upgrade(settingsPayload: [UInt8], headRequest: Bool = false) throws {
        let result = settingsPayload.withUnsafeBufferPointer { buffer in
            nghttp2_session_upgrade2(raw, buffer.baseAddress, buffer.count, headRequest ? 1 : 0, nil)
        }
        if result != 0 { throw HTTP2Error("nghttp2_session_upgrade2", Int(result)) }
    }

    // MARK: helpers

    /// Where the result of an nghttp2 call that cannot throw goes: a fatal error ends the
    /// session (`failure`); any error is logged with the call and the stream. True on success.
    @discardableResult
    func check(_ call: String, _ result: Int32, stream: StreamID? = nil) -> Bool {
        guard result < 0 else { return true }
        let error = HTTP2Error((stream.map { "stream \($0): " } ?? "") + HTTP2Error(call, Int(result)).description)
        if nghttp2_is_fatal(result) != 0 && failure == nil { failure = error }
        log?(error.description)
        return false
    }

    private func dataProvider(_ body: DataSource) -> nghttp2_data_provider {
        var provider = nghttp2_data_provider()
        provider.source.ptr = Unmanaged.passUnretained(body).toOpaque()
        provider.read_callback = onReadData
        return provider
    }

    private func withHeaderVector<R>(_ headers: [(String, String)], _ body: (UnsafePointer<nghttp2_nv>, Int) -> R) -> R {
        var storage: [[UInt8]] = []
        storage.reserveCapacity(headers.count * 2)
        for (name, value) in headers {
            storage.append(Array(name.utf8))
            storage.append(Array(value.utf8))
        }
        var vector: [nghttp2_nv] = []
        vector.reserveCapacity(headers.count)
        return withExtendedLifetime(storage) {
            for index in 0..<headers.count {
                let name = storage[2 * index], value = storage[2 * index + 1]
                vector.append(nghttp2_nv(
                    name: UnsafeMutablePointer(mutating: name.withUnsafeBufferPointer { $0.baseAddress! }),
                    value: UnsafeMutablePointer(mutating: value.withUnsafeBufferPointer { $0.baseAddress ?? UnsafePointer(bitPattern: 1)! }),
                    namelen: name.count, valuelen: value.count,
                    flags: UInt8(NGHTTP2_NV_FLAG_NONE.rawValue)))
            }
            return vector.withUnsafeBufferPointer { body($0.baseAddress!, $0.count) }
        }
    }

    /// The connection is gone: no stream will close through nghttp2 any more, and nothing will
    /// pull a body again. Its bodies go now; kept, they would keep this session alive through
    /// whatever holds it (an `HTTP2Stream` holds its `Connection`, which holds this session).
    public func releaseBodies() { bodies.removeAll() }

    fileprivate func streamClosed(_ stream: StreamID) {
        bodies[stream] = nil
        pendingHeaders[stream] = nil
        oversized.remove(stream)
    }

    /// A frame nghttp2 dropped instead of sending (a response to a stream that closed first, any
    /// frame once the session is closing). A dropped response leaves its body here with no stream
    /// left to close: it is released now.
    fileprivate func notSent(type: UInt32, stream: StreamID, code: Int32) {
        if code != NGHTTP2_ERR_SESSION_CLOSING.rawValue {
            log?("stream \(stream): frame type \(type) not sent: \(String(cString: nghttp2_strerror(code)))")
        }
        if type == NGHTTP2_HEADERS.rawValue, stream > 0, nghttp2_session_find_stream(raw, stream) == nil {
            streamClosed(stream)
        }
    }

    fileprivate func beginHeaders(_ stream: StreamID) { pendingHeaders[stream] = HeaderList() }

    /// Keeps one decoded field, unless the list has outgrown the limit: the size is checked
    /// before any string is made, so a block that expands (an HPACK bomb) costs no memory.
    fileprivate func header(_ stream: StreamID, _ name: UnsafePointer<UInt8>?, _ nameLength: Int,
                            _ value: UnsafePointer<UInt8>?, _ valueLength: Int) {
        if !oversized.isEmpty && oversized.contains(stream) { return }
        let fieldSize = nameLength + valueLength + 32
        let size = pendingHeaders[stream]?.size ?? 0
        if size + fieldSize > maxHeaderListSize {
            if pendingHeaders.removeValue(forKey: stream) != nil { oversized.insert(stream) }
            return
        }
        pendingHeaders[stream, default: HeaderList()].append(text(name, nameLength), text(value, valueLength), size: fieldSize)
    }

    fileprivate func headersDone(_ stream: StreamID, category: UInt32, endStream: Bool) {
        let headers = pendingHeaders.removeValue(forKey: stream) ?? HeaderList()
        if oversized.remove(stream) != nil {
            log?("stream \(stream): header list larger than \(maxHeaderListSize) bytes")
            if role == .server {
                do {
                    try submitResponse(stream, headers: [(":status", "431"), ("content-type", "text/plain; charset=utf-8")],
                                       body: StaticBody("header list larger than \(maxHeaderListSize) bytes\n"))
                } catch {
                    // Without its answer the stream would stay open: reset it instead.
                    log?("stream \(stream): the 431 answer: \(error)")
                    reset(stream, code: NGHTTP2_REFUSED_STREAM.rawValue)
                }
            } else {
                reset(stream, code: NGHTTP2_PROTOCOL_ERROR.rawValue)
            }
            return
        }
        // Trailers (a HEADERS frame after the request's, RFC 9113 8.1): only their END_STREAM
        // matters, which ends the upload like END_STREAM on DATA.
        if role == .server && category == NGHTTP2_HCAT_HEADERS.rawValue {
            if endStream { delegate?.session(self, endOfStream: stream) }
            return
        }
        delegate?.session(self, headers: headers, stream: stream, endStream: endStream)
    }
}

@inline(__always)
private func session(_ userData: UnsafeMutableRawPointer?) -> Session {
    Unmanaged<Session>.fromOpaque(userData!).takeUnretainedValue()
}

private func text(_ pointer: UnsafePointer<UInt8>?, _ count: Int) -> String {
    guard let pointer, count > 0 else { return "" }
    return String(decoding: UnsafeBufferPointer(start: pointer, count: count), as: UTF8.self)
}

private let onBeginHeaders: nghttp2_on_begin_headers_callback = { _, frame, userData in
    session(userData).beginHeaders(frame!.pointee.hd.stream_id)
    return 0
}

private let onHeader: nghttp2_on_header_callback = { _, frame, name, nameLength, value, valueLength, _, userData in
    session(userData).header(frame!.pointee.hd.stream_id, name, nameLength, value, valueLength)
    return 0
}

private let onFrameReceive: nghttp2_on_frame_recv_callback = { _, frame, userData in
    let header = frame!.pointee.hd
    let endStream = header.flags & UInt8(NGHTTP2_FLAG_END_STREAM.rawValue) != 0
    let owner = session(userData)
    switch UInt32(header.type) {
    case NGHTTP2_HEADERS.rawValue:
        owner.headersDone(header.stream_id, category: frame!.pointee.headers.cat.rawValue, endStream: endStream)
    case NGHTTP2_PING.rawValue:
        if header.flags & UInt8(NGHTTP2_FLAG_ACK.rawValue) != 0 { owner.onPingAcknowledged?() }
    case NGHTTP2_GOAWAY.rawValue:
        let goaway = frame!.pointee.goaway
        if goaway.error_code != NGHTTP2_NO_ERROR.rawValue {
            let debug = goaway.opaque_data_len > 0 ? ": " + text(goaway.opaque_data, min(goaway.opaque_data_len, 256)) : ""
            owner.peerGoaway = "GOAWAY \(String(cString: nghttp2_http2_strerror(goaway.error_code)))\(debug)"
        }
        owner.onGoaway?()
    case NGHTTP2_DATA.rawValue:
        if endStream { owner.delegate?.session(owner, endOfStream: header.stream_id) }
    default:
        break
    }
    return 0
}

/// nghttp2's own account of a protocol error it handled (a stream or the session ended).
private let onError: nghttp2_error_callback2 = { _, _, message, length, userData in
    session(userData).log?(withoutHeaderValue(text(UnsafeRawPointer(message)?.assumingMemoryBound(to: UInt8.self), length)))
    return 0
}

/// nghttp2 quotes an invalid header field whole (`name: [authorization], value: [Bearer ...]`):
/// the value may be a credential, so the log keeps the name and the value's length only.
func withoutHeaderValue(_ message: String) -> String {
    let bytes = Array(message.utf8)
    func occurrences(_ text: String) -> [Int] {
        let marker = Array(text.utf8)
        guard bytes.count >= marker.count else { return [] }
        return (0...(bytes.count - marker.count)).filter { bytes[$0..<($0 + marker.count)].elementsEqual(marker) }
    }
    let values = occurrences(", value: [")
    guard let start = values.first else { return message }
    if values.count > 1 {
        // The marker inside the name or the value itself: which part is the value cannot be
        // told, so neither the name nor the value is shown.
        let cut = occurrences("name: [").first.map { $0 < start ? $0 : start } ?? start
        return String(decoding: bytes[..<cut], as: UTF8.self) + "header of \(bytes.count - cut) bytes, not shown"
    }
    let value = bytes[(start + 10)...]
    let length = value.count - (value.last == UInt8(ascii: "]") ? 1 : 0)
    return String(decoding: bytes[..<start], as: UTF8.self) + ", value: \(length) bytes, not shown"
}

private let onFrameSend: nghttp2_on_frame_send_callback = { _, frame, userData in
    let header = frame!.pointee.hd
    if UInt32(header.type) == NGHTTP2_GOAWAY.rawValue, frame!.pointee.goaway.error_code != NGHTTP2_NO_ERROR.rawValue {
        session(userData).log?("sent GOAWAY \(String(cString: nghttp2_http2_strerror(frame!.pointee.goaway.error_code)))")
    }
    return 0
}

private let onDataChunk: nghttp2_on_data_chunk_recv_callback = { raw, _, stream, data, length, userData in
    let owner = session(userData)
    // The connection window opens at once: were it held until the bytes are written, a few
    // streams whose readers stopped would stall every other stream of the connection. What one
    // stream may make this side hold is bounded by its own window, opened by `consume`.
    let consumed = nghttp2_session_consume_connection(raw, length)
    if !owner.check("nghttp2_session_consume_connection", consumed) && nghttp2_is_fatal(consumed) != 0 {
        return Int32(NGHTTP2_ERR_CALLBACK_FAILURE.rawValue)
    }
    owner.delegate?.session(owner, data: UnsafeRawBufferPointer(start: data, count: length), stream: stream)
    return 0
}

private let onFrameNotSend: nghttp2_on_frame_not_send_callback = { _, frame, code, userData in
    let header = frame!.pointee.hd
    session(userData).notSent(type: UInt32(header.type), stream: header.stream_id, code: code)
    return 0
}

private let onStreamClose: nghttp2_on_stream_close_callback = { _, stream, errorCode, userData in
    let owner = session(userData)
    owner.delegate?.session(owner, closed: stream, errorCode: errorCode)
    owner.streamClosed(stream)
    return 0
}

private let onReadLength: nghttp2_data_source_read_length_callback = { _, _, _, sessionWindow, streamWindow, maxFrame, _ in
    // Frames as large as the peer allows: fewer headers, fewer iovecs.
    Int(min(sessionWindow, streamWindow, Int32(maxFrame)))
}

private let onReadData: nghttp2_data_source_read_callback = { _, _, _, length, flags, source, _ in
    let body = Unmanaged<DataSource>.fromOpaque(source!.pointee.ptr).takeUnretainedValue()
    let (count, ends) = body.pendingBytes(limit: length)
    if count == 0 && !ends { return Int(NGHTTP2_ERR_DEFERRED.rawValue) }
    var value = UInt32(pf_nghttp2_data_flag_no_copy)
    if ends { value |= UInt32(pf_nghttp2_data_flag_eof) }
    flags!.pointee = value
    return count
}

private let onSendData: nghttp2_send_data_callback = { _, frame, frameHeader, length, source, userData in
    let owner = session(userData)
    let body = Unmanaged<DataSource>.fromOpaque(source!.pointee.ptr).takeUnretainedValue()
    guard let queue = owner.output else { return Int32(NGHTTP2_ERR_WOULDBLOCK.rawValue) }
    queue.append(bytes: frameHeader!, count: 9)
    queue.append(payload: body.takePayload(count: length), count: length, source: body)
    return 0
}
