import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// One parsed HTTP/1.1 request.
public struct HTTPRequest: Sendable {
    public var method: String
    /// The path without the query string, e.g. `/v1/images/generations`.
    public var path: String
    public var query: String
    public var version: String
    /// Header names lower-cased, in arrival order.
    public var headers: [(name: String, value: String)]
    public var body: Data

    /// The first header with this (case-insensitive) name.
    public func header(_ name: String) -> String? {
        let lower = name.lowercased()
        return headers.first { $0.name == lower }?.value
    }
}

/// One HTTP response; `Content-Length` and `Connection` are added by the server.
public struct HTTPResponse: Sendable {
    public var status: Int
    public var headers: [(name: String, value: String)]
    public var body: Data

    public init(status: Int, headers: [(name: String, value: String)] = [], body: Data = Data()) {
        self.status = status
        self.headers = headers
        self.body = body
    }

    public static func text(_ status: Int, _ text: String, contentType: String = "text/plain; charset=utf-8") -> HTTPResponse {
        HTTPResponse(status: status, headers: [("Content-Type", contentType)], body: Data(text.utf8))
    }

    public static func json(_ status: Int, _ body: Data) -> HTTPResponse {
        HTTPResponse(status: status, headers: [("Content-Type", "application/json")], body: body)
    }

    static func reason(_ status: Int) -> String {
        switch status {
        case 100: return "Continue"
        case 200: return "OK"
        case 204: return "No Content"
        case 400: return "Bad Request"
        case 401: return "Unauthorized"
        case 404: return "Not Found"
        case 405: return "Method Not Allowed"
        case 408: return "Request Timeout"
        case 411: return "Length Required"
        case 413: return "Content Too Large"
        case 429: return "Too Many Requests"
        case 431: return "Request Header Fields Too Large"
        case 500: return "Internal Server Error"
        case 501: return "Not Implemented"
        case 502: return "Bad Gateway"
        case 503: return "Service Unavailable"
        case 504: return "Gateway Timeout"
        case 505: return "HTTP Version Not Supported"
        default: return "Status \(status)"
        }
    }
}

/// Limits and address of the HTTP server.
public struct HTTPServerConfiguration: Sendable, Equatable {
    /// Address to listen on: loopback unless the operator asks for more.
    public var host = "127.0.0.1"
    /// TCP port; 0 picks a free one (see `HTTPServer.port`).
    public var port = 8080
    public var maxHeaderBytes = 16 * 1024
    public var maxBodyBytes = 1 << 20
    /// Seconds a client has to send a whole request (headers and body) once it starts.
    public var requestTimeout: TimeInterval = 10
    /// Seconds an idle keep-alive connection stays open.
    public var idleTimeout: TimeInterval = 5
    /// Connections served at once; more get 503 and are closed.
    public var maxConnections = 64

    public init() {}
}

/// Why the HTTP server could not start.
public struct HTTPServerError: Error, CustomStringConvertible {
    public let description: String
}

/// A small HTTP/1.1 server on POSIX sockets: one thread per connection (bounded), keep-alive,
/// `Content-Length` bodies only, `Expect: 100-continue`, and size and time limits that answer
/// 413, 431, 408 or 400 instead of waiting or growing without bound.
public final class HTTPServer: @unchecked Sendable {
    public typealias Handler = @Sendable (HTTPRequest) -> HTTPResponse

    public let configuration: HTTPServerConfiguration
    private let handler: Handler
    private var listener: Int32 = -1
    private let lock = NSLock()
    private var stopping = false
    private var active = 0
    private var acceptThread: Thread?
    /// The port actually bound.
    public private(set) var port = 0

    /// A server that answers every request with `handler` (called on the connection's thread).
    public init(configuration: HTTPServerConfiguration, handler: @escaping Handler) {
        self.configuration = configuration
        self.handler = handler
    }

    /// Binds, listens and starts accepting on a background thread.
    public func start() throws {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_flags = AI_PASSIVE | AI_NUMERICHOST
        #if canImport(Glibc)
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        #else
        hints.ai_socktype = SOCK_STREAM
        #endif
        var info: UnsafeMutablePointer<addrinfo>?
        let status = getaddrinfo(configuration.host, String(configuration.port), &hints, &info)
        guard status == 0, let address = info else {
            throw HTTPServerError(description: "HTTP host '\(configuration.host)' is not a numeric address: \(String(cString: gai_strerror(status)))")
        }
        defer { freeaddrinfo(info) }
        let fd = socket(address.pointee.ai_family, address.pointee.ai_socktype, address.pointee.ai_protocol)
        guard fd >= 0 else { throw HTTPServerError(description: "socket(): \(String(cString: strerror(errno)))") }
        var yes: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, socklen_t(MemoryLayout<Int32>.size))
        guard bind(fd, address.pointee.ai_addr, address.pointee.ai_addrlen) == 0 else {
            let message = String(cString: strerror(errno))
            close(fd)
            throw HTTPServerError(description: "cannot bind HTTP \(configuration.host):\(configuration.port): \(message)")
        }
        guard listen(fd, 128) == 0 else {
            close(fd)
            throw HTTPServerError(description: "listen(): \(String(cString: strerror(errno)))")
        }
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        _ = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        port = Int(storage.ss_family == sa_family_t(AF_INET6)
            ? withUnsafePointer(to: &storage) { $0.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { UInt16(bigEndian: $0.pointee.sin6_port) } }
            : withUnsafePointer(to: &storage) { $0.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { UInt16(bigEndian: $0.pointee.sin_port) } })
        listener = fd
        // Threads hold the server strongly: it lives until they finish, whoever releases it.
        let thread = Thread { self.acceptLoop() }
        acceptThread = thread
        thread.start()
        thread.name = "sura-accept"
    }

    /// Stops accepting; open connections finish their current request.
    public func stop() {
        lock.lock()
        stopping = true
        lock.unlock()
        while acceptThread?.isFinished == false { usleep(5000) }
        if listener >= 0 { close(listener) }
        listener = -1
    }

    private var isStopping: Bool {
        lock.lock()
        defer { lock.unlock() }
        return stopping
    }

    private func acceptLoop() {
        while !isStopping {
            var descriptor = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
            guard poll(&descriptor, 1, 100) > 0 else { continue }
            let client = accept(listener, nil, nil)
            guard client >= 0 else { continue }
            lock.lock()
            let admitted = active < configuration.maxConnections
            if admitted { active += 1 }
            lock.unlock()
            guard admitted else {
                let connection = HTTPConnection(fd: client, configuration: configuration)
                connection.write(HTTPResponse.text(503, "too many connections\n"), keepAlive: false)
                connection.close()
                continue
            }
            let thread = Thread {
                let connection = HTTPConnection(fd: client, configuration: self.configuration)
                connection.serve(handler: self.handler) { self.isStopping }
                connection.close()
                self.lock.lock()
                self.active -= 1
                self.lock.unlock()
            }
            thread.start()
            thread.name = "sura-http-conn"
        }
    }
}

/// One client connection: reads requests with limits and writes responses.
final class HTTPConnection {
    private enum ReadFailure: Error {
        case closed
        case timedOut
        case reply(HTTPResponse)
    }

    let fd: Int32
    let configuration: HTTPServerConfiguration
    private var buffer = [UInt8]()

    init(fd: Int32, configuration: HTTPServerConfiguration) {
        self.fd = fd
        self.configuration = configuration
        #if canImport(Darwin)
        var yes: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_NOSIGPIPE, &yes, socklen_t(MemoryLayout<Int32>.size))
        #endif
        // A client that stops reading cannot hold a connection thread forever.
        let seconds = max(1, configuration.requestTimeout)
        var limit = timeval(tv_sec: Int(seconds), tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
    }

    func close() {
        #if canImport(Glibc)
        Glibc.close(fd)
        #else
        Darwin.close(fd)
        #endif
    }

    func serve(handler: HTTPServer.Handler, isStopping: () -> Bool) {
        while !isStopping() {
            let request: HTTPRequest
            do {
                request = try readRequest()
            } catch ReadFailure.reply(let response) {
                write(response, keepAlive: false)
                return
            } catch ReadFailure.timedOut where !buffer.isEmpty {
                write(HTTPResponse.text(408, "request not received within \(configuration.requestTimeout) s\n"), keepAlive: false)
                return
            } catch {
                return
            }
            let keepAlive = request.version == "HTTP/1.1" ? request.header("connection")?.lowercased() != "close"
                                                          : request.header("connection")?.lowercased() == "keep-alive"
            let response = handler(request)
            guard write(response, keepAlive: keepAlive, headOnly: request.method == "HEAD"), keepAlive else { return }
        }
    }

    /// Reads until `deadline`; false on timeout, throws `closed` on EOF or error.
    private func fill(until deadline: Date) throws -> Bool {
        let remaining = deadline.timeIntervalSinceNow
        guard remaining > 0 else { return false }
        var descriptor = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        let ready = poll(&descriptor, 1, Int32(min(remaining * 1000, 60_000).rounded(.up)))
        if ready == 0 { return false }
        if ready < 0 { if errno == EINTR { return true }; throw ReadFailure.closed }
        var chunk = [UInt8](repeating: 0, count: 16 * 1024)
        let count = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        guard count > 0 else { throw ReadFailure.closed }
        buffer.append(contentsOf: chunk[0..<count])
        return true
    }

    private func readRequest() throws -> HTTPRequest {
        // The idle timeout applies until the first byte, the request timeout from then on.
        let idleDeadline = Date().addingTimeInterval(configuration.idleTimeout)
        while buffer.isEmpty { guard try fill(until: idleDeadline) else { throw ReadFailure.timedOut } }
        let deadline = Date().addingTimeInterval(configuration.requestTimeout)
        var headerEnd: Int?
        while headerEnd == nil {
            headerEnd = Self.find([13, 10, 13, 10], in: buffer)
            if headerEnd == nil {
                guard buffer.count <= configuration.maxHeaderBytes else {
                    throw ReadFailure.reply(.text(431, "request headers exceed \(configuration.maxHeaderBytes) bytes\n"))
                }
                guard try fill(until: deadline) else { throw ReadFailure.timedOut }
            }
        }
        guard headerEnd! <= configuration.maxHeaderBytes else {
            throw ReadFailure.reply(.text(431, "request headers exceed \(configuration.maxHeaderBytes) bytes\n"))
        }
        guard let head = String(bytes: buffer[0..<headerEnd!], encoding: .utf8) else {
            throw ReadFailure.reply(.text(400, "request headers are not UTF-8\n"))
        }
        buffer.removeFirst(headerEnd! + 4)
        var lines = head.components(separatedBy: "\r\n")
        let requestLine = lines.removeFirst().split(separator: " ", omittingEmptySubsequences: false)
        guard requestLine.count == 3, !requestLine[0].isEmpty, requestLine[1].hasPrefix("/") || requestLine[1] == "*" else {
            throw ReadFailure.reply(.text(400, "malformed request line; expected 'METHOD /path HTTP/1.1'\n"))
        }
        let version = String(requestLine[2])
        guard version == "HTTP/1.1" || version == "HTTP/1.0" else {
            throw ReadFailure.reply(.text(505, "HTTP version '\(version)' is not supported; use HTTP/1.1\n"))
        }
        var headers: [(name: String, value: String)] = []
        for line in lines {
            guard let colon = line.firstIndex(of: ":"), colon != line.startIndex, !line.hasPrefix(" "), !line.hasPrefix("\t") else {
                throw ReadFailure.reply(.text(400, "malformed header line '\(line.prefix(60))'\n"))
            }
            headers.append((line[..<colon].trimmingCharacters(in: .whitespaces).lowercased(),
                            line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)))
        }
        let target = String(requestLine[1])
        let pathEnd = target.firstIndex(of: "?") ?? target.endIndex
        var request = HTTPRequest(method: String(requestLine[0]), path: String(target[..<pathEnd]),
                                  query: pathEnd < target.endIndex ? String(target[target.index(after: pathEnd)...]) : "",
                                  version: version, headers: headers, body: Data())
        if request.header("transfer-encoding") != nil {
            throw ReadFailure.reply(.text(501, "Transfer-Encoding is not supported; send Content-Length\n"))
        }
        let lengths = headers.filter { $0.name == "content-length" }.map(\.value)
        guard lengths.count <= 1 else { throw ReadFailure.reply(.text(400, "more than one Content-Length header\n")) }
        let length: Int
        if let text = lengths.first {
            guard let value = Int(text), value >= 0, text.allSatisfy(\.isASCII) else {
                throw ReadFailure.reply(.text(400, "Content-Length '\(text.prefix(20))' is not a non-negative integer\n"))
            }
            length = value
        } else {
            length = 0
            if request.method == "POST" || request.method == "PUT" {
                throw ReadFailure.reply(.text(411, "\(request.method) needs a Content-Length header\n"))
            }
        }
        guard length <= configuration.maxBodyBytes else {
            throw ReadFailure.reply(.text(413, "request body of \(length) bytes exceeds the limit of \(configuration.maxBodyBytes)\n"))
        }
        if length > buffer.count, request.header("expect")?.lowercased() == "100-continue" {
            _ = sendAll(Array("HTTP/1.1 100 Continue\r\n\r\n".utf8))
        }
        while buffer.count < length { guard try fill(until: deadline) else { throw ReadFailure.timedOut } }
        request.body = Data(buffer[0..<length])
        buffer.removeFirst(length)
        return request
    }

    private static func find(_ needle: [UInt8], in haystack: [UInt8]) -> Int? {
        guard haystack.count >= needle.count else { return nil }
        for start in 0...(haystack.count - needle.count) where haystack[start] == needle[0] {
            if Array(haystack[start..<(start + needle.count)]) == needle { return start }
        }
        return nil
    }

    /// Writes the response; for HEAD, the headers describe the body that is not sent.
    @discardableResult
    func write(_ response: HTTPResponse, keepAlive: Bool, headOnly: Bool = false) -> Bool {
        var head = "HTTP/1.1 \(response.status) \(HTTPResponse.reason(response.status))\r\n"
        for (name, value) in response.headers where !["content-length", "connection"].contains(name.lowercased()) {
            head += "\(name): \(value)\r\n"
        }
        head += "Content-Length: \(response.body.count)\r\nConnection: \(keepAlive ? "keep-alive" : "close")\r\n\r\n"
        return sendAll(Array(head.utf8)) && (headOnly || sendAll([UInt8](response.body)))
    }

    private func sendAll(_ bytes: [UInt8]) -> Bool {
        var offset = 0
        let deadline = Date().addingTimeInterval(configuration.requestTimeout)
        while offset < bytes.count {
            #if canImport(Glibc)
            let flags = Int32(MSG_NOSIGNAL)
            #else
            let flags: Int32 = 0
            #endif
            let sent = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + offset, bytes.count - offset, flags) }
            if sent > 0 {
                offset += sent
            } else if sent < 0 && (errno == EAGAIN || errno == EINTR) && Date() < deadline {
                usleep(1000)
            } else {
                return false
            }
        }
        return true
    }
}
