import HTTP2

/// The `port` header of a request: one value, a decimal number 1-65535 without sign or leading zero.
public enum PortHeader {
    public static func parse(_ values: [String]) -> Result<Int, HeadError> {
        guard let text = values.first else { return .failure(HeadError("missing port header")) }
        if values.count > 1 { return .failure(HeadError("more than one port header")) }
        let digits = text.utf8
        guard !digits.isEmpty, digits.count <= 5, digits.allSatisfy({ $0 >= 48 && $0 <= 57 }), digits.first != 48,
              let port = Int(text), port <= 65535 else {
            return .failure(HeadError("invalid port \"\(text.prefix(32))\": expected a number from 1 to 65535"))
        }
        return .success(port)
    }
}

/// Reason phrases for the statuses the relay answers with.
public enum HTTPStatus {
    public static func phrase(_ status: Int) -> String {
        switch status {
        case 200: return "OK"
        case 400: return "Bad Request"
        case 404: return "Not Found"
        case 408: return "Request Timeout"
        case 411: return "Length Required"
        case 413: return "Content Too Large"
        case 426: return "Upgrade Required"
        case 429: return "Too Many Requests"
        case 431: return "Request Header Fields Too Large"
        case 502: return "Bad Gateway"
        case 503: return "Service Unavailable"
        case 504: return "Gateway Timeout"
        default: return "Error"
        }
    }
}
