// SPDY/3 frames (draft-mbelshe-httpbis-spdy-00, section 2.2), all big-endian. Every frame starts
// with 8 bytes:
//   control: u1 1, u15 version (3), u16 type, u8 flags, u24 length
//   data:    u1 0, u31 stream id,    u8 flags (1 = FIN), u24 length
// then `length` bytes of payload.

/// The length of a frame's first part, control or data.
public let frameHeadLength = 8
/// SPDY's 24-bit length field: the longest payload any frame can have.
public let maxFrameLength = 0xFF_FFFF
public let spdyVersion: UInt16 = 3

public enum ControlType: UInt16, Sendable {
    case synStream = 1
    case synReply = 2
    case rstStream = 3
    case settings = 4
    case ping = 6
    case goAway = 7
    case headers = 8
    case windowUpdate = 9
}

public enum FrameFlags {
    /// The sender's last frame on the stream (SYN_STREAM, SYN_REPLY, HEADERS, DATA).
    public static let fin: UInt8 = 0x01
    /// SYN_STREAM: the receiver may not send on this stream.
    public static let unidirectional: UInt8 = 0x02
}

/// RST_STREAM status codes; a struct so a code this side does not know is still a value.
public struct ResetStatus: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public static let protocolError = ResetStatus(rawValue: 1)
    public static let invalidStream = ResetStatus(rawValue: 2)
    public static let refusedStream = ResetStatus(rawValue: 3)
    public static let unsupportedVersion = ResetStatus(rawValue: 4)
    public static let cancel = ResetStatus(rawValue: 5)
    public static let internalError = ResetStatus(rawValue: 6)
    public static let flowControlError = ResetStatus(rawValue: 7)
    public static let streamInUse = ResetStatus(rawValue: 8)
    public static let streamAlreadyClosed = ResetStatus(rawValue: 9)
    public static let frameTooLarge = ResetStatus(rawValue: 11)

    public var description: String {
        switch rawValue {
        case 1: "PROTOCOL_ERROR"
        case 2: "INVALID_STREAM"
        case 3: "REFUSED_STREAM"
        case 4: "UNSUPPORTED_VERSION"
        case 5: "CANCEL"
        case 6: "INTERNAL_ERROR"
        case 7: "FLOW_CONTROL_ERROR"
        case 8: "STREAM_IN_USE"
        case 9: "STREAM_ALREADY_CLOSED"
        case 11: "FRAME_TOO_LARGE"
        default: "status \(rawValue)"
        }
    }
}

public struct GoAwayStatus: RawRepresentable, Hashable, Sendable {
    public var rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public static let ok = GoAwayStatus(rawValue: 0)
    public static let protocolError = GoAwayStatus(rawValue: 1)
    public static let internalError = GoAwayStatus(rawValue: 2)
}

/// One SETTINGS entry: u8 flags, u24 id, u32 value. Received and reported, never acted on:
/// kubectl sends none, and none of them changes what a port-forward server does.
public struct SettingsEntry: Equatable, Sendable {
    public var flags: UInt8
    public var id: UInt32
    public var value: UInt32

    public init(flags: UInt8 = 0, id: UInt32, value: UInt32) {
        self.flags = flags
        self.id = id
        self.value = value
    }
}

/// The 8 bytes that start a DATA frame. A connection writes these from its own memory and then
/// the payload from wherever the payload is (a pooled buffer, a pipe), so a DATA frame's payload
/// never has to be copied next to its header.
public struct DataFrameHeader: Equatable, Sendable {
    public var stream: UInt32
    public var flags: UInt8
    public var length: Int

    public init(stream: UInt32, length: Int, fin: Bool) {
        self.stream = stream
        self.flags = fin ? FrameFlags.fin : 0
        self.length = length
    }

    init(stream: UInt32, flags: UInt8, length: Int) {
        self.stream = stream
        self.flags = flags
        self.length = length
    }

    public var fin: Bool { flags & FrameFlags.fin != 0 }

    /// The header these 8 bytes are, or nil when they start a control frame.
    public init?(decoding bytes: UnsafeRawBufferPointer) {
        precondition(bytes.count >= frameHeadLength)
        guard case .data(let header) = FrameHead(bytes) else { return nil }
        self = header
    }

    /// Writes the 8 bytes at `pointer`.
    public func write(to pointer: UnsafeMutableRawPointer) {
        let stream = stream & 0x7fff_ffff
        let fields: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8) = (
            UInt8(stream >> 24), UInt8(stream >> 16 & 0xff), UInt8(stream >> 8 & 0xff), UInt8(stream & 0xff),
            flags, UInt8(length >> 16 & 0xff), UInt8(length >> 8 & 0xff), UInt8(length & 0xff))
        withUnsafeBytes(of: fields) { pointer.copyMemory(from: $0.baseAddress!, byteCount: frameHeadLength) }
    }

    public var bytes: [UInt8] {
        var bytes = [UInt8](repeating: 0, count: frameHeadLength)
        bytes.withUnsafeMutableBytes { write(to: $0.baseAddress!) }
        return bytes
    }
}

/// A frame's first 8 bytes, decoded.
public enum FrameHead: Equatable, Sendable {
    case control(version: UInt16, type: UInt16, flags: UInt8, length: Int)
    case data(DataFrameHeader)

    public init(_ bytes: UnsafeRawBufferPointer) {
        var value: UInt64 = 0
        for index in 0..<frameHeadLength { value = value << 8 | UInt64(bytes[index]) }
        self.init(value)
    }

    /// The 8 bytes as one big-endian number.
    init(_ value: UInt64) {
        let flags = UInt8(truncatingIfNeeded: value >> 24)
        let length = Int(value & 0xFF_FFFF)
        if value & (1 << 63) != 0 {
            self = .control(version: UInt16(truncatingIfNeeded: value >> 48) & 0x7fff,
                            type: UInt16(truncatingIfNeeded: value >> 32), flags: flags, length: length)
        } else {
            self = .data(DataFrameHeader(stream: UInt32(truncatingIfNeeded: value >> 32), flags: flags, length: length))
        }
    }
}

/// Control frames serialized onto the end of a byte array. Header-block frames take their block
/// already compressed (`HeaderCompressor`), since the compression context is the connection's.
public enum FrameEncoder {
    /// Appends a control frame head; `length` may be patched later with `patchLength`.
    public static func appendControlHead(_ type: ControlType, flags: UInt8, length: Int, to output: inout [UInt8]) {
        output += [0x80 | UInt8(spdyVersion >> 8), UInt8(spdyVersion & 0xff),
                   UInt8(type.rawValue >> 8), UInt8(type.rawValue & 0xff),
                   flags, UInt8(length >> 16 & 0xff), UInt8(length >> 8 & 0xff), UInt8(length & 0xff)]
    }

    /// Sets the length of the control frame whose head starts at `headStart` to what follows it.
    public static func patchLength(headStart: Int, in output: inout [UInt8]) {
        let length = output.count - headStart - frameHeadLength
        output[headStart + 5] = UInt8(length >> 16 & 0xff)
        output[headStart + 6] = UInt8(length >> 8 & 0xff)
        output[headStart + 7] = UInt8(length & 0xff)
    }

    static func append(_ value: UInt32, to output: inout [UInt8]) {
        output += [UInt8(value >> 24), UInt8(value >> 16 & 0xff), UInt8(value >> 8 & 0xff), UInt8(value & 0xff)]
    }

    public static func synStream(stream: UInt32, associated: UInt32 = 0, priority: UInt8 = 0, flags: UInt8,
                                 compressedBlock: some Collection<UInt8>, to output: inout [UInt8]) {
        appendControlHead(.synStream, flags: flags, length: 10 + compressedBlock.count, to: &output)
        append(stream & 0x7fff_ffff, to: &output)
        append(associated & 0x7fff_ffff, to: &output)
        output += [(priority & 0x7) << 5, 0]
        output += compressedBlock
    }

    public static func synReply(stream: UInt32, fin: Bool, compressedBlock: some Collection<UInt8>,
                                to output: inout [UInt8]) {
        appendControlHead(.synReply, flags: fin ? FrameFlags.fin : 0, length: 4 + compressedBlock.count, to: &output)
        append(stream & 0x7fff_ffff, to: &output)
        output += compressedBlock
    }

    public static func headers(stream: UInt32, fin: Bool, compressedBlock: some Collection<UInt8>,
                               to output: inout [UInt8]) {
        appendControlHead(.headers, flags: fin ? FrameFlags.fin : 0, length: 4 + compressedBlock.count, to: &output)
        append(stream & 0x7fff_ffff, to: &output)
        output += compressedBlock
    }

    public static func rstStream(stream: UInt32, status: ResetStatus, to output: inout [UInt8]) {
        appendControlHead(.rstStream, flags: 0, length: 8, to: &output)
        append(stream & 0x7fff_ffff, to: &output)
        append(status.rawValue, to: &output)
    }

    public static func settings(_ entries: [SettingsEntry], to output: inout [UInt8]) {
        appendControlHead(.settings, flags: 0, length: 4 + 8 * entries.count, to: &output)
        append(UInt32(entries.count), to: &output)
        for entry in entries {
            append(UInt32(entry.flags) << 24 | entry.id & 0xFF_FFFF, to: &output)
            append(entry.value, to: &output)
        }
    }

    public static func ping(id: UInt32, to output: inout [UInt8]) {
        appendControlHead(.ping, flags: 0, length: 4, to: &output)
        append(id, to: &output)
    }

    public static func goAway(lastGoodStream: UInt32, status: GoAwayStatus, to output: inout [UInt8]) {
        appendControlHead(.goAway, flags: 0, length: 8, to: &output)
        append(lastGoodStream & 0x7fff_ffff, to: &output)
        append(status.rawValue, to: &output)
    }

    public static func windowUpdate(stream: UInt32, delta: UInt32, to output: inout [UInt8]) {
        appendControlHead(.windowUpdate, flags: 0, length: 8, to: &output)
        append(stream & 0x7fff_ffff, to: &output)
        append(delta & 0x7fff_ffff, to: &output)
    }

    /// A whole DATA frame, payload copied: for short payloads (an error stream's text, tests).
    public static func data(stream: UInt32, fin: Bool, payload: some Collection<UInt8>, to output: inout [UInt8]) {
        output += DataFrameHeader(stream: stream, length: payload.count, fin: fin).bytes
        output += payload
    }
}

/// Reads big-endian numbers out of a control frame's payload.
extension UnsafeRawBufferPointer {
    func bigEndianUInt32(at offset: Int) -> UInt32 {
        UInt32(self[offset]) << 24 | UInt32(self[offset + 1]) << 16 | UInt32(self[offset + 2]) << 8 | UInt32(self[offset + 3])
    }
}
