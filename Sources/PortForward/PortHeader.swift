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

