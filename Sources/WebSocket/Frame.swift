/// One frame's header (RFC 6455 section 5.2), decoded and encoded apart from its payload so the
/// payload can be received in pieces and sent from the caller's own buffer.
public enum Opcode: UInt8, Sendable {
    case continuation = 0x0
    case text = 0x1
    case binary = 0x2
    case close = 0x8
    case ping = 0x9
    case pong = 0xA

    public var isControl: Bool { rawValue & 0x8 != 0 }
}

public struct FrameHeader: Sendable, Equatable {
    public var fin: Bool
    public var opcode: Opcode
    /// The masking key as it stands on the wire, first byte in the high bits; nil when unmasked.
    public var mask: UInt32?
    public var payloadLength: Int

    /// 2 bytes, 2 more for a 16-bit length, 8 more for a 64-bit one, 4 more for a mask.
    public static let maxEncodedLength = 14
    /// RFC 6455 section 5.5: control frames carry at most this much and are never fragmented.
    public static let maxControlPayload = 125

    public init(fin: Bool = true, opcode: Opcode, mask: UInt32? = nil, payloadLength: Int) {
        self.fin = fin
        self.opcode = opcode
        self.mask = mask
        self.payloadLength = payloadLength
    }

    public var encodedLength: Int {
        let length = payloadLength <= 125 ? 2 : payloadLength <= 0xFFFF ? 4 : 10
        return length + (mask == nil ? 0 : 4)
    }

    /// Writes the header (the shortest length form, as section 5.2 requires) to the front of `out`,
    /// which must hold `encodedLength` bytes; returns that count.
    @discardableResult
    public func encode(into out: UnsafeMutableRawBufferPointer) -> Int {
        precondition(out.count >= encodedLength && payloadLength >= 0)
        out[0] = (fin ? 0x80 : 0) | opcode.rawValue
        let maskBit: UInt8 = mask == nil ? 0 : 0x80
        var index: Int
        if payloadLength <= 125 {
            out[1] = maskBit | UInt8(payloadLength)
            index = 2
        } else if payloadLength <= 0xFFFF {
            out[1] = maskBit | 126
            out[2] = UInt8(truncatingIfNeeded: payloadLength >> 8)
            out[3] = UInt8(truncatingIfNeeded: payloadLength)
            index = 4
        } else {
            out[1] = maskBit | 127
            for shift in 0..<8 { out[2 + shift] = UInt8(truncatingIfNeeded: UInt64(payloadLength) >> (56 - 8 * shift)) }
            index = 10
        }
        if let mask {
            for shift in 0..<4 { out[index + shift] = UInt8(truncatingIfNeeded: mask >> (24 - 8 * shift)) }
            index += 4
        }
        return index
    }

    public func encoded() -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: encodedLength)
        bytes.withUnsafeMutableBytes { _ = encode(into: $0) }
        return bytes
    }

    public enum Decoded: Sendable, Equatable {
        /// The header is not complete: it needs at least this many bytes in all.
        case needMore(Int)
        /// The header and the count of bytes it took.
        case header(FrameHeader, length: Int)
        case invalid(FrameError)
    }

    /// Decodes a header from the front of `bytes`, checking what a header alone can break: reserved
    /// bits (no extension is ever negotiated), unknown opcodes, control frame size and fragmentation,
    /// a 64-bit length with its top bit set. Masking and message rules are the reader's.
    public static func decode(_ bytes: UnsafeRawBufferPointer) -> Decoded {
        guard bytes.count >= 2 else { return .needMore(2) }
        let first = bytes[0], second = bytes[1]
        guard first & 0x70 == 0 else { return .invalid(.reservedBits) }
        guard let opcode = Opcode(rawValue: first & 0x0F) else { return .invalid(.unknownOpcode(first & 0x0F)) }
        let masked = second & 0x80 != 0
        let shortLength = Int(second & 0x7F)
        let lengthBytes = shortLength == 126 ? 2 : shortLength == 127 ? 8 : 0
        let total = 2 + lengthBytes + (masked ? 4 : 0)
        guard bytes.count >= total else { return .needMore(total) }
        var length = 0
        if lengthBytes == 0 {
            length = shortLength
        } else {
            var wide: UInt64 = 0
            for index in 0..<lengthBytes { wide = wide << 8 | UInt64(bytes[2 + index]) }
            guard wide >> 63 == 0 else { return .invalid(.lengthTooLarge) }
            length = Int(wide)
        }
        let fin = first & 0x80 != 0
        if opcode.isControl {
            guard fin else { return .invalid(.fragmentedControl) }
            guard length <= maxControlPayload else { return .invalid(.controlTooLong(length)) }
        }
        var mask: UInt32?
        if masked {
            var key: UInt32 = 0
            for index in 0..<4 { key = key << 8 | UInt32(bytes[2 + lengthBytes + index]) }
            mask = key
        }
        return .header(FrameHeader(fin: fin, opcode: opcode, mask: mask, payloadLength: length), length: total)
    }
}

/// Close codes (RFC 6455 section 7.4.1) this library sends or must recognize.
public enum CloseCode {
    public static let normal: UInt16 = 1000
    public static let goingAway: UInt16 = 1001
    public static let protocolError: UInt16 = 1002
    public static let unsupportedData: UInt16 = 1003
    public static let invalidPayload: UInt16 = 1007
    public static let policyViolation: UInt16 = 1008
    public static let messageTooBig: UInt16 = 1009
    public static let internalError: UInt16 = 1011

    /// Codes a peer may put in a close frame: 1004-1006 and 1015 are reserved for reports that never
    /// travel, and the ranges below 1000 and from 1016 to 2999 are not assigned.
    public static func isValidOnWire(_ code: UInt16) -> Bool {
        switch code {
        case 1000...1003, 1007...1014, 3000...4999: return true
        default: return false
        }
    }
}

/// A broken rule in what the peer sent; each maps to the close code to answer with.
public enum FrameError: Error, Sendable, Equatable, CustomStringConvertible {
    case reservedBits
    case unknownOpcode(UInt8)
    case fragmentedControl
    case controlTooLong(Int)
    case lengthTooLarge
    /// A client frame without a mask, or a server frame with one (section 5.1).
    case masking(expected: Bool)
    /// A continuation with no message open, or a new message before the last one ended.
    case unexpectedContinuation
    case unfinishedMessage
    case badClosePayload
    /// The message would pass `WebSocketLimits.maxMessageBytes`.
    case messageTooBig(limit: Int)
    /// A message the protocol on top does not allow (a text message in the SPDY tunnel).
    case unsupportedMessage(String)
    /// A payload the protocol on top cannot decode (bad base64 in the channel protocol).
    case invalidPayload(String)

    public var closeCode: UInt16 {
        switch self {
        case .messageTooBig: return CloseCode.messageTooBig
        case .unsupportedMessage: return CloseCode.unsupportedData
        case .invalidPayload: return CloseCode.invalidPayload
        default: return CloseCode.protocolError
        }
    }

    public var description: String {
        switch self {
        case .reservedBits: return "a frame has reserved bits set, and no extension was negotiated"
        case .unknownOpcode(let opcode): return "unknown opcode \(opcode)"
        case .fragmentedControl: return "a control frame without FIN"
        case .controlTooLong(let length): return "a control frame of \(length) bytes (at most 125)"
        case .lengthTooLarge: return "a frame length with its top bit set"
        case .masking(let expected): return expected ? "a client frame without a mask" : "a server frame with a mask"
        case .unexpectedContinuation: return "a continuation frame with no message to continue"
        case .unfinishedMessage: return "a new message before the last one ended"
        case .badClosePayload: return "a close frame with a malformed code"
        case .messageTooBig(let limit): return "a message larger than \(limit) bytes"
        case .unsupportedMessage(let what): return what
        case .invalidPayload(let what): return what
        }
    }
}
