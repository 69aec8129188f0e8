/// What the peer did, as the session reports it to its delegate.
public enum SPDYEvent {
    /// A new stream. The session answers nothing by itself: the owner decides (`synReply`, or
    /// `reset`). `fin`: the peer sends nothing more on it.
    case synStream(stream: UInt32, associated: UInt32, priority: UInt8, headers: HeaderBlock, fin: Bool)
    /// Client side: the peer accepted a stream this side opened (`openStream`).
    case synReply(stream: UInt32, headers: HeaderBlock, fin: Bool)
    /// More headers on an open stream (SPDY/3 HEADERS; kubectl sends none).
    case headers(stream: UInt32, headers: HeaderBlock, fin: Bool)
    /// Payload of a DATA frame, in pieces as the bytes arrived. `bytes` points into what was passed
    /// to `receive` (or the session's own buffer) and is valid only during the call.
    case data(stream: UInt32, bytes: UnsafeRawBufferPointer)
    /// The peer's FIN on a DATA frame (after its last `data`): half-close.
    case peerEnded(stream: UInt32)
    /// The stream is gone: reset by the peer (`byPeer`), or by this session for a stream error
    /// (its RST_STREAM is queued). Nothing more is reported on it.
    case reset(stream: UInt32, status: ResetStatus, byPeer: Bool)
    /// A PING. `isReply` false: the peer's own (odd ids from a client, even from a server),
    /// already echoed by the session; true: the answer to `ping()`.
    case ping(id: UInt32, isReply: Bool)
    case goAway(lastGoodStream: UInt32, status: GoAwayStatus)
    case settings([SettingsEntry])
    /// SPDY/3.1 flow control, which spdystream (kubectl's SPDY) neither sends nor obeys: reported,
    /// never enforced. See docs/PROTOCOL.md, "SPDY/3.1".
    case windowUpdate(stream: UInt32, delta: UInt32)
}

public protocol SPDYSessionDelegate: AnyObject {
    func session(_ session: SPDYSession, _ event: SPDYEvent)
}

/// A SPDY/3.1 session with no I/O, as nghttp2's is, in either role: bytes go in through `receive`, events
/// come out through the delegate, and the frames to send gather in an output buffer the owner
/// drains (`produce`). DATA payloads bypass that buffer both ways: received payloads are handed
/// over where they lie, and a payload to send goes from the owner's memory right after the 8
/// bytes `dataHeader` returns.
///
/// Ordering rule for the owner: write the pending output first, then a DATA frame's header and its
/// whole payload, never control frames in the middle of a DATA frame.
///
/// SPDY/3 streams a client opens are odd and increase. A server (the relay, as a kubelet) never
/// opens one; a client (`portforward forward --protocol spdy`) opens them with `openStream` and
/// refuses the server's (portforward.k8s.io has no server push). There is no flow control: WINDOW_UPDATE is reported and ignored, and nothing here
/// waits for a window, so the owner bounds its memory by reading less (back-pressure is TCP's).
public final class SPDYSession {
    public enum Role: Sendable {
        /// Opens the (odd) streams, PINGs with odd ids.
        case client
        /// Answers the client's streams, PINGs with even ids.
        case server
    }

    public weak var delegate: SPDYSessionDelegate?
    public let limits: SPDYLimits
    public let role: Role

    private struct StreamState {
        var replied = false
        var localEnded = false
        var remoteEnded = false
    }

    private let reader: FrameReader
    private let compressor: HeaderCompressor
    private let decompressor: HeaderDecompressor
    private var streams: [UInt32: StreamState] = [:]
    /// The highest stream id the peer opened: SYN_STREAM ids must grow, and a GOAWAY names it.
    public private(set) var lastPeerStream: UInt32 = 0
    /// The id `openStream` gives next (a client's: odd, growing). A server's stays 2: it opens none.
    private var nextStreamID: UInt32
    /// Whether the payload of the DATA frame being read goes to the delegate (else it is dropped:
    /// its stream was reset or ended, and the frame was already in flight).
    private var deliveringData = false
    private var nextPingID: UInt32
    public private(set) var sentGoAway = false
    public private(set) var receivedGoAway = false
    /// The error that ended the session: every later `receive` throws it again.
    public private(set) var failure: SPDYError?

    private var output: [UInt8] = []
    private var outputStart = 0

    public init(role: Role = .server, limits: SPDYLimits = SPDYLimits(), delegate: SPDYSessionDelegate? = nil) throws {
        self.role = role
        self.limits = limits
        self.delegate = delegate
        nextStreamID = role == .client ? 1 : 2
        nextPingID = role == .client ? 1 : 2
        reader = FrameReader(maxControlLength: limits.maxControlFrameLength)
        compressor = try HeaderCompressor()
        decompressor = try HeaderDecompressor(limit: limits.maxHeaderBlockSize)
    }

    // MARK: Receiving

    /// Feeds received bytes, in any split. Throws a `SPDYError` for a session error, after queuing
    /// a GOAWAY: write the pending output, then close. Not reentrant (a delegate must not call it).
    public func receive(_ bytes: UnsafeRawBufferPointer) throws {
        if let failure { throw failure }
        var index = 0
        do {
            while let event = try reader.next(bytes, from: &index) {
                try handle(event)
            }
        } catch let error as SPDYError {
            fail(error)
            throw error
        }
    }

    /// Bytes still missing from the next frame head (0 inside a frame): what a connection reads
    /// before it knows whether a DATA payload follows that it could splice.
    public var headMissing: Int { reader.headMissing }

    /// Payload bytes of the DATA frame being read that have not arrived yet, and its stream: a
    /// connection may splice up to this many bytes for that stream and report them with `skipData`.
    /// 0 when the payload's stream is not open (it is dropped: read and discard it instead).
    public var dataRemaining: Int { deliveringData ? reader.dataRemaining : 0 }
    public var dataStream: UInt32? { deliveringData ? reader.currentData?.stream : nil }
    /// Bytes of the current DATA frame to discard (its stream is gone).
    public var discardRemaining: Int { deliveringData ? 0 : reader.dataRemaining }

    /// `count` payload bytes of the current DATA frame went to its stream without passing through
    /// `receive` (spliced). Reports `peerEnded` if they ended a FIN frame.
    public func skipData(_ count: Int) throws {
        if let failure { throw failure }
        reader.skipData(count)
        try receive(UnsafeRawBufferPointer(start: nil, count: 0))
    }

    private func emit(_ event: SPDYEvent) {
        delegate?.session(self, event)
    }

    private func handle(_ event: FrameReader.Event) throws {
        switch event {
        case .control(let type, let flags, let payload):
            try handleControl(type, flags: flags, payload: payload)
        case .dataHead(let header):
            try dataStarts(header)
        case .data(let stream, let bytes):
            if deliveringData { emit(.data(stream: stream, bytes: bytes)) }
        case .dataEnd(let header):
            guard deliveringData else { return }
            deliveringData = false
            if header.fin { peerEnded(header.stream) }
        }
    }

    private func dataStarts(_ header: DataFrameHeader) throws {
        let stream = header.stream
        guard stream != 0 else { throw SPDYError.dataOnStreamZero }
        if let state = streams[stream] {
            if state.remoteEnded {
                // 2.3.7: DATA after the peer's FIN.
                resetStream(stream, .streamAlreadyClosed)
                deliveringData = false
            } else {
                deliveringData = true
            }
        } else {
            // A stream this side reset or ended: its DATA may have been in flight, drop it. One
            // that never existed is a stream error (2.2.2).
            notOpen(stream)
            deliveringData = false
        }
    }

    private func handleControl(_ type: ControlType, flags: UInt8, payload: UnsafeRawBufferPointer) throws {
        let length = payload.count
        func require(_ valid: Bool) throws {
            if !valid { throw SPDYError.invalidFrameLength(type: type.rawValue, length: length) }
        }
        switch type {
        case .synStream:
            try require(length >= 10)
            let stream = payload.bigEndianUInt32(at: 0) & 0x7fff_ffff
            let associated = payload.bigEndianUInt32(at: 4) & 0x7fff_ffff
            let priority = payload[8] >> 5
            // Inflated first, whatever becomes of the stream: the zlib stream is the connection's.
            let headers = try decompressor.decompress(UnsafeRawBufferPointer(rebasing: payload[10...]))
            try synStream(stream, associated: associated, priority: priority, headers: headers, flags: flags)

        case .synReply:
            try require(length >= 4)
            let stream = payload.bigEndianUInt32(at: 0) & 0x7fff_ffff
            let headers = try decompressor.decompress(UnsafeRawBufferPointer(rebasing: payload[4...]))
            // Only for a stream this side opened (a server opens none), and only once (2.3.3).
            guard let state = streams[stream], isLocalStream(stream) else {
                if isLocalStream(stream) { notOpen(stream) } else { resetStream(stream, .invalidStream) }
                return
            }
            guard !state.replied else {
                resetStream(stream, .streamInUse)
                return
            }
            streams[stream]!.replied = true
            let fin = flags & FrameFlags.fin != 0
            emit(.synReply(stream: stream, headers: headers, fin: fin))
            if fin { peerEnded(stream) }

        case .headers:
            try require(length >= 4)
            let stream = payload.bigEndianUInt32(at: 0) & 0x7fff_ffff
            let headers = try decompressor.decompress(UnsafeRawBufferPointer(rebasing: payload[4...]))
            guard let state = streams[stream] else {
                notOpen(stream)
                return
            }
            guard !state.remoteEnded else {
                resetStream(stream, .streamAlreadyClosed)
                return
            }
            let fin = flags & FrameFlags.fin != 0
            emit(.headers(stream: stream, headers: headers, fin: fin))
            if fin { peerEnded(stream) }

        case .rstStream:
            try require(length == 8)
            let stream = payload.bigEndianUInt32(at: 0) & 0x7fff_ffff
            let status = ResetStatus(rawValue: payload.bigEndianUInt32(at: 4))
            if streams.removeValue(forKey: stream) != nil {
                emit(.reset(stream: stream, status: status, byPeer: true))
            }

        case .settings:
            try require(length >= 4)
            let count = Int(payload.bigEndianUInt32(at: 0))
            try require(count <= (length - 4) / 8 && length == 4 + 8 * count)
            var entries: [SettingsEntry] = []
            for index in 0..<count {
                let word = payload.bigEndianUInt32(at: 4 + 8 * index)
                entries.append(SettingsEntry(flags: UInt8(word >> 24), id: word & 0xFF_FFFF,
                                             value: payload.bigEndianUInt32(at: 8 + 8 * index)))
            }
            emit(.settings(entries))

        case .ping:
            try require(length == 4)
            let id = payload.bigEndianUInt32(at: 0)
            // A client's pings are odd, a server's even (2.6.5): echo the peer's, ours come back.
            let isReply = id & 1 == nextPingID & 1
            if !isReply { FrameEncoder.ping(id: id, to: &output) }
            emit(.ping(id: id, isReply: isReply))

        case .goAway:
            try require(length == 8)
            receivedGoAway = true
            emit(.goAway(lastGoodStream: payload.bigEndianUInt32(at: 0) & 0x7fff_ffff,
                         status: GoAwayStatus(rawValue: payload.bigEndianUInt32(at: 4))))

        case .windowUpdate:
            try require(length == 8)
            emit(.windowUpdate(stream: payload.bigEndianUInt32(at: 0) & 0x7fff_ffff,
                               delta: payload.bigEndianUInt32(at: 4) & 0x7fff_ffff))
        }
    }

    private func synStream(_ stream: UInt32, associated: UInt32, priority: UInt8, headers: HeaderBlock,
                           flags: UInt8) throws {
        guard stream != 0 else { throw SPDYError.invalidStreamID(stream, "stream 0") }
        guard !isLocalStream(stream) else {
            throw SPDYError.invalidStreamID(stream, role == .server ? "a client's streams are odd" : "a server's streams are even")
        }
        guard stream > lastPeerStream else {
            // 2.3.2: the same id again while it is open is a stream error; an id that went
            // backwards is a session error.
            if streams[stream] != nil {
                resetStream(stream, .protocolError)
                return
            }
            throw SPDYError.invalidStreamID(stream, "not above the last stream \(lastPeerStream)")
        }
        // After our GOAWAY new streams are ignored: the peer knows they were not processed.
        guard !sentGoAway else { return }
        lastPeerStream = stream
        // A client takes no pushed streams: portforward.k8s.io has none.
        guard role == .server, streams.count < limits.maxConcurrentStreams else {
            queueReset(stream, .refusedStream)
            return
        }
        let fin = flags & FrameFlags.fin != 0
        streams[stream] = StreamState(localEnded: flags & FrameFlags.unidirectional != 0, remoteEnded: fin)
        emit(.synStream(stream: stream, associated: associated, priority: priority, headers: headers, fin: fin))
        if fin { closeIfDone(stream) }
    }

    /// A DATA or HEADERS frame on a stream that is not open: dropped, and if the stream never
    /// existed, RST_STREAM INVALID_STREAM (2.2.2). A client's id above the last one counts as used
    /// from then on, as if its SYN_STREAM had come and been reset: the peer was told the stream is
    /// reset, so a SYN_STREAM for it (or a lower id) later is a session error, not a stream this
    /// side would answer with SYN_REPLY. (GOAWAY's last-good-stream counts the streams answered
    /// with SYN_REPLY or RST_STREAM, so it names it too.)
    private func notOpen(_ stream: UInt32) {
        if isLocalStream(stream) {
            // One of ours that ended or was reset: its frames were in flight.
            guard stream >= nextStreamID else { return }
            queueReset(stream, .invalidStream)
            return
        }
        guard stream > lastPeerStream else { return }
        queueReset(stream, .invalidStream)
        lastPeerStream = stream
    }

    /// Whether `stream` is of the ids this side opens (odd for a client, even for a server).
    private func isLocalStream(_ stream: UInt32) -> Bool {
        (stream & 1 == 1) == (role == .client)
    }

    private func peerEnded(_ stream: UInt32) {
        guard streams[stream] != nil else { return }
        streams[stream]!.remoteEnded = true
        emit(.peerEnded(stream: stream))
        closeIfDone(stream)
    }

    private func closeIfDone(_ stream: UInt32) {
        if let state = streams[stream], state.localEnded, state.remoteEnded {
            streams[stream] = nil
        }
    }

    /// A stream error on a stream the delegate knows: RST_STREAM, and the delegate hears of it.
    private func resetStream(_ stream: UInt32, _ status: ResetStatus) {
        queueReset(stream, status)
        if streams.removeValue(forKey: stream) != nil {
            emit(.reset(stream: stream, status: status, byPeer: false))
        }
    }

    private func queueReset(_ stream: UInt32, _ status: ResetStatus) {
        FrameEncoder.rstStream(stream: stream, status: status, to: &output)
    }

    private func fail(_ error: SPDYError) {
        guard failure == nil else { return }
        failure = error
        if !sentGoAway {
            FrameEncoder.goAway(lastGoodStream: lastPeerStream, status: error.goAwayStatus, to: &output)
            sentGoAway = true
        }
    }

    // MARK: Sending

    /// Whether the stream is open for this side to send on.
    public func isWritable(_ stream: UInt32) -> Bool {
        streams[stream].map { !$0.localEnded } ?? false
    }

    public func isOpen(_ stream: UInt32) -> Bool { streams[stream] != nil }
    public var openStreams: Int { streams.count }

    /// Accepts the peer's stream. portforward.k8s.io answers with no headers, at once.
    public func synReply(stream: UInt32, headers: HeaderBlock = HeaderBlock(), fin: Bool = false) throws {
        guard let state = streams[stream], !isLocalStream(stream), !state.replied, !state.localEnded else {
            throw SPDYError.streamNotWritable(stream)
        }
        try appendHeaderFrame(headers) { output in
            FrameEncoder.synReply(stream: stream, fin: fin, compressedBlock: EmptyCollection(), to: &output)
        }
        streams[stream]!.replied = true
        if fin { localEnded(stream) }
    }

    /// Client side: opens the next stream (SYN_STREAM) and returns its id; `synReply` is
    /// reported when the server accepts it. Throws once either side said GOAWAY.
    public func openStream(headers: HeaderBlock, fin: Bool = false) throws -> UInt32 {
        precondition(role == .client, "a server opens no streams")
        if let failure { throw failure }
        let stream = nextStreamID
        guard !sentGoAway, !receivedGoAway, stream <= 0x7fff_ffff else { throw SPDYError.streamNotWritable(stream) }
        try appendHeaderFrame(headers) { output in
            FrameEncoder.synStream(stream: stream, flags: fin ? FrameFlags.fin : 0, compressedBlock: EmptyCollection(), to: &output)
        }
        nextStreamID += 2
        streams[stream] = StreamState(localEnded: fin)
        return stream
    }

    /// A control frame whose head `head` appends, followed by `headers` compressed on the
    /// connection's zlib stream, its length patched.
    private func appendHeaderFrame(_ headers: HeaderBlock, head: (inout [UInt8]) -> Void) throws {
        let headStart = output.count
        head(&output)
        do {
            try compressor.compress(headers, appendingTo: &output)
        } catch let error as SPDYError {
            // The compressor's state is unknown now: nothing more can be sent with it.
            output.removeLast(output.count - headStart)
            fail(error)
            throw error
        }
        FrameEncoder.patchLength(headStart: headStart, in: &output)
    }

    /// The 8 bytes of a DATA frame the owner sends with `count` payload bytes from its own memory
    /// (written after the pending output, followed at once by the payload).
    public func dataHeader(stream: UInt32, count: Int, fin: Bool) throws -> DataFrameHeader {
        guard count <= maxFrameLength else { throw SPDYError.dataTooLong(count) }
        guard isWritable(stream) else { throw SPDYError.streamNotWritable(stream) }
        if fin { localEnded(stream) }
        return DataFrameHeader(stream: stream, length: count, fin: fin)
    }

    /// A whole DATA frame into the output, payload copied: for short ones (an error stream's
    /// text, an empty FIN).
    public func sendData(stream: UInt32, _ payload: some Collection<UInt8>, fin: Bool) throws {
        let header = try dataHeader(stream: stream, count: payload.count, fin: fin)
        output += header.bytes
        output += payload
    }

    /// Half-close: an empty DATA frame with FIN.
    public func finish(stream: UInt32) throws {
        try sendData(stream: stream, EmptyCollection(), fin: true)
    }

    private func localEnded(_ stream: UInt32) {
        streams[stream]!.localEnded = true
        closeIfDone(stream)
    }

    /// Ends the stream both ways with RST_STREAM (CANCEL is what spdystream sends for a stream
    /// it gives up on). No event follows.
    public func reset(stream: UInt32, status: ResetStatus = .cancel) {
        queueReset(stream, status)
        streams[stream] = nil
        // Reset while its DATA frame is being read (from the delegate): the rest is dropped.
        if reader.currentData?.stream == stream { deliveringData = false }
    }

    /// Sends a PING and returns its id (even from a server, odd from a client); its echo is
    /// reported as `ping(id, isReply: true)`.
    public func ping() -> UInt32 {
        let id = nextPingID
        nextPingID &+= 2
        FrameEncoder.ping(id: id, to: &output)
        return id
    }

    /// Tells the peer no new stream will be processed: those above `lastPeerStream` are ignored
    /// from now on. The owner closes once its open streams are done.
    public func goAway(status: GoAwayStatus = .ok) {
        guard !sentGoAway else { return }
        sentGoAway = true
        FrameEncoder.goAway(lastGoodStream: lastPeerStream, status: status, to: &output)
    }

    // MARK: Output

    /// Bytes of frames waiting to be written.
    public var pendingOutput: Int { output.count - outputStart }

    /// Copies up to `buffer.count` pending bytes into `buffer` (a pooled buffer the owner writes
    /// from) and returns how many; they count as sent.
    public func produce(into buffer: UnsafeMutableRawBufferPointer) -> Int {
        let count = min(buffer.count, pendingOutput)
        guard count > 0 else { return 0 }
        output.withUnsafeBytes { bytes in
            buffer.baseAddress!.copyMemory(from: bytes.baseAddress! + outputStart, byteCount: count)
        }
        consumeOutput(count)
        return count
    }

    /// The pending bytes, for a writer that writes from them in place, then calls `consumeOutput`.
    public func withPendingOutput<Result>(_ body: (UnsafeRawBufferPointer) throws -> Result) rethrows -> Result {
        try output.withUnsafeBytes { try body(UnsafeRawBufferPointer(rebasing: $0[outputStart...])) }
    }

    public func consumeOutput(_ count: Int) {
        precondition(count <= pendingOutput)
        outputStart += count
        if outputStart == output.count {
            output.removeAll(keepingCapacity: output.capacity <= 64 * 1024)
            outputStart = 0
        }
    }

    /// All pending bytes, taken (tests, and simple owners).
    public func takeOutput() -> [UInt8] {
        let bytes = Array(output[outputStart...])
        consumeOutput(pendingOutput)
        return bytes
    }
}
