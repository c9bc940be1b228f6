import Coordinator
import Foundation
import Tensor
import Worker
import XCTest

/// The web page of `sura serve` in a real browser: headless Chromium loads `GET /` from a live
/// `sura serve --workers 1` (null executor), runs the page's JavaScript against that server, and
/// the test reads the DOM the browser built (`--dump-dom`), not the HTML the server sent.
///
/// The page is driven by its query string (`?prompt=…&size=…&n=…&generate=1` fills the form and
/// submits it). `--virtual-time-budget` lets the page's status timer fire a few times; virtual
/// time stands still while a fetch is pending, so the DOM is printed after the generation's reply
/// however loaded the machine is. Every wait has a deadline and Chromium is killed if it overruns.
final class WebPageBrowserTests: XCTestCase {
    private var serve: ServeProcess?

    override func tearDown() {
        if let process = serve?.serve {
            // SIGTERM lets serve stop its local worker; SIGKILL if that takes too long.
            process.signal(SIGTERM)
            if process.waitForExit(timeout: 10) == nil { process.stop() }
            if (testRun?.failureCount ?? 0) > 0 { print(process.transcript) }
        }
        serve = nil
    }

    /// Chromium, or nil after recording a failure that says how to get it.
    private func requireChromium() -> HeadlessChromium? {
        guard let chromium = HeadlessChromium.find() else {
            XCTFail("the web page test needs a headless browser: no `chromium` (nor \(HeadlessChromium.names.dropFirst().joined(separator: ", "))) "
                    + "on PATH; install Debian's `chromium` package, e.g. by running scripts/setup")
            return nil
        }
        return chromium
    }

    /// Starts `sura serve --workers 1` with HTTP on a free port; returns the port and the local
    /// worker's status entry (`name`, `pid`, …) once it has registered.
    private func startServe(_ extra: [String]) throws -> (port: Int, worker: [String: Any]) {
        let started = try ServeProcess(["--workers", "1"] + extra, http: true)
        serve = started
        guard let port = started.httpPort else { throw RawHTTP.Failure(description: "serve printed no HTTP port:\n\(started.serve.transcript)") }
        var worker: [String: Any]?
        _ = eventually(timeout: 30, interval: 0.1) {
            let status = try? RawHTTP.request(port: port, method: "GET", path: "/v1/status", timeout: 5).json
            worker = (status?["workers"] as? [[String: Any]])?.first
            return worker != nil
        }
        guard let worker else { throw RawHTTP.Failure(description: "the local worker did not register within 30 s:\n\(started.serve.transcript)") }
        return (port, worker)
    }

    private func pageURL(port: Int, _ query: [String: String]) -> String {
        var components = URLComponents(string: "http://127.0.0.1:\(port)/")!
        components.queryItems = query.sorted { $0.key < $1.key }.map { URLQueryItem(name: $0.key, value: $0.value) }
        return components.string!
    }

    /// The value of `sura_http_requests_total` for one route and status code (0 when absent).
    private func httpRequests(port: Int, route: String, code: Int) throws -> Double {
        let text = try RawHTTP.request(port: port, method: "GET", path: "/metrics").text
        let series = "sura_http_requests_total{code=\"\(code)\",route=\"\(route)\"} "
        return text.split(separator: "\n").first { $0.hasPrefix(series) }.flatMap { Double($0.dropFirst(series.count)) } ?? 0
    }

    func testPageFillsTheWorkerTableAndShowsTheGeneratedImages() throws {
        guard let chromium = requireChromium() else { return }
        let (port, worker) = try startServe([])
        // What the server sends has an empty table and no images: only the page's scripts, run by
        // the browser against this server, can fill them.
        let sent = try RawHTTP.request(port: port, method: "GET", path: "/").text
        XCTAssertTrue(sent.contains(#"<tbody id="workers"></tbody>"#))
        XCTAssertFalse(sent.contains(#"class="result""#))

        let statusPollsBefore = try httpRequests(port: port, route: "status", code: 200)
        let prompt = "red sneakers next to a bag"
        let dom = try chromium.dumpDOM(of: pageURL(port: port, ["prompt": prompt, "size": "64x64", "n": "2", "generate": "1"]))

        // The status panel, polled from /v1/status.
        XCTAssertEqual(dom.text(ofID: "state"), "serving")
        XCTAssertEqual(dom.text(ofID: "worker-count"), "1")
        let rows = dom.workerRows
        XCTAssertEqual(rows.count, 1, "one tr.worker row for the one local worker")
        if let row = rows.first {
            XCTAssertEqual(row.first, worker["name"] as? String)
            XCTAssertEqual(row.dropFirst().first, (worker["pid"] as? Int).map(String.init), "the row shows the live worker's pid")
            XCTAssertTrue(["idle", "busy"].contains(row.dropFirst(2).first ?? ""), "worker state: \(row)")
        }
        XCTAssertGreaterThanOrEqual(Int(dom.text(ofID: "completed") ?? "") ?? 0, 1, "a status poll after the generation counts it")

        // The generation: two images of 64×64, each the null executor's picture of this prompt and its seed.
        XCTAssertEqual(dom.text(ofID: "error"), "", "the page shows no error")
        XCTAssertNotNil(dom.attributes(ofID: "busy")?["hidden"], "the busy marker is hidden again")
        XCTAssertNil(dom.attributes(ofID: "generate")?["disabled"], "the button is enabled again")
        let images = dom.tags("img", class: "result")
        XCTAssertEqual(images.count, 2, "two img.result for n=2")
        var seeds = Set<UInt64>()
        for image in images {
            XCTAssertEqual(image["alt"], prompt)
            let prefix = "data:image/png;base64,"
            guard let src = image["src"], src.hasPrefix(prefix), let png = Data(base64Encoded: String(src.dropFirst(prefix.count))) else {
                XCTFail("img.result has no base64 PNG source: \(image["src"]?.prefix(60) ?? "none")")
                continue
            }
            guard let seed = image["data-seed"].flatMap({ UInt64($0) }) else {
                XCTFail("img.result has no data-seed: \(image.keys.sorted())")
                continue
            }
            seeds.insert(seed)
            let decoded = try PNGImage(pngData: png, name: "image shown by the browser")
            XCTAssertEqual([decoded.width, decoded.height, decoded.channels], [64, 64, 3])
            let expected = NullImageExecutor.pixels(for: GenerationRequest(id: "browser", prompt: prompt, width: 64, height: 64, seed: seed))
            XCTAssertTrue(decoded.pixels == expected, "the image shown is the null executor's picture of '\(prompt)' with seed \(seed)")
        }
        XCTAssertEqual(seeds.count, 2, "the two images have their own seeds")

        // And the browser's requests are the ones this server answered.
        XCTAssertEqual(try httpRequests(port: port, route: "generations", code: 200), 1)
        XCTAssertGreaterThan(try httpRequests(port: port, route: "status", code: 200), statusPollsBefore, "the page polled /v1/status")
    }

    func testPageShowsTheServersErrorAndNoImage() throws {
        guard let chromium = requireChromium() else { return }
        let (port, _) = try startServe(["--max-prompt-characters", "20"])
        let prompt = "a prompt well over twenty characters"
        let dom = try chromium.dumpDOM(of: pageURL(port: port, ["prompt": prompt, "generate": "1"]))

        XCTAssertEqual(dom.text(ofID: "error"), "prompt is \(prompt.count) characters; the limit is 20", "the gateway's error message is shown")
        XCTAssertTrue(dom.tags("img", class: "result").isEmpty, "no image for a rejected request")
        XCTAssertNotNil(dom.attributes(ofID: "busy")?["hidden"], "the busy marker is hidden again")
        XCTAssertNil(dom.attributes(ofID: "generate")?["disabled"], "the button is enabled again")
        XCTAssertEqual(dom.workerRows.count, 1, "the status panel still works")
        XCTAssertEqual(try httpRequests(port: port, route: "generations", code: 400), 1)
    }
}

/// One headless Chromium per page: load it, let its scripts run, print the DOM.
struct HeadlessChromium {
    /// Binary names tried on PATH: Debian's package `chromium` first, then other distributions' names.
    static let names = ["chromium", "chromium-browser", "google-chrome-stable", "google-chrome"]
    let executable: URL

    static func find() -> HeadlessChromium? {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? ""
        let directories = path.split(separator: ":").map(String.init) + ["/usr/bin", "/usr/local/bin"]
        for name in names {
            for directory in directories {
                let candidate = URL(fileURLWithPath: directory).appendingPathComponent(name)
                if FileManager.default.isExecutableFile(atPath: candidate.path) { return HeadlessChromium(executable: candidate) }
            }
        }
        return nil
    }

    /// Loads `url` in a fresh profile and returns the DOM once `virtualTimeMs` of page time have
    /// passed (pending fetches pause that clock); throws if Chromium fails or takes over `timeout` s.
    func dumpDOM(of url: String, virtualTimeMs: Int = 3000, timeout: TimeInterval = 60) throws -> DumpedDOM {
        let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("sura-chromium-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: scratch) }
        let domFile = scratch.appendingPathComponent("dom.html"), logFile = scratch.appendingPathComponent("chromium.log")
        for file in [domFile, logFile] { _ = FileManager.default.createFile(atPath: file.path, contents: nil) }

        let process = Process()
        process.executableURL = executable
        // --no-sandbox: the sandbox needs user namespaces or a non-root user, which CI containers
        // often lack; the only page loaded is this test's own server on loopback.
        process.arguments = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                             "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
                             "--user-data-dir=\(scratch.appendingPathComponent("profile").path)",
                             "--virtual-time-budget=\(virtualTimeMs)", "--dump-dom", url]
        var environment = ProcessInfo.processInfo.environment
        environment["XDG_CONFIG_HOME"] = scratch.path  // keep crash reports and caches out of $HOME
        environment["XDG_CACHE_HOME"] = scratch.path
        process.environment = environment
        process.standardInput = FileHandle.nullDevice
        // Files, not pipes: nobody has to drain them while we wait.
        process.standardOutput = try FileHandle(forWritingTo: domFile)
        process.standardError = try FileHandle(forWritingTo: logFile)
        try process.run()
        let finished = eventually(timeout: timeout, interval: 0.05) { !process.isRunning }
        if !finished {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
        process.waitUntilExit()
        let log = String(decoding: (try? Data(contentsOf: logFile)) ?? Data(), as: UTF8.self)
        let logTail = log.split(separator: "\n").suffix(15).joined(separator: "\n")
        guard finished else {
            throw RawHTTP.Failure(description: "chromium did not finish \(url) within \(Int(timeout)) s; its log ends:\n\(logTail)")
        }
        let html = String(decoding: try Data(contentsOf: domFile), as: UTF8.self)
        guard process.terminationStatus == 0, html.contains("</html>") else {
            throw RawHTTP.Failure(description: "chromium exited with status \(process.terminationStatus) and \(html.utf8.count) bytes "
                                  + "of DOM for \(url); its log ends:\n\(logTail)")
        }
        return DumpedDOM(html: html)
    }
}

/// The DOM as Chromium serialises it (`document.documentElement.outerHTML`), with the few
/// lookups the page's test needs: attributes are always double-quoted and `&"<>` escaped.
struct DumpedDOM {
    let html: String

    /// The text of the element with `id`, which holds text only (no child elements).
    func text(ofID id: String) -> String? {
        matches(#"<([a-z0-9]+)\b[^>]*\bid="\#(id)"[^>]*>([^<]*)</\1>"#, in: html).first.map { Self.unescape($0[2]) }
    }

    /// The attributes of the element with `id` (a boolean attribute such as `hidden` has value "").
    func attributes(ofID id: String) -> [String: String]? {
        matches(#"<[a-z0-9]+(\s[^>]*\bid="\#(id)"[^>]*)>"#, in: html).first.map { Self.attributes($0[1]) }
    }

    /// The attributes of each `<tag>` whose class is exactly `className`.
    func tags(_ tag: String, class className: String) -> [[String: String]] {
        matches(#"<\#(tag)(\s[^>]*)>"#, in: html).map { Self.attributes($0[1]) }.filter { $0["class"] == className }
    }

    /// The cell texts of each `tr.worker` row of the workers table.
    var workerRows: [[String]] {
        guard let body = matches(#"<tbody id="workers">(.*?)</tbody>"#, in: html).first?[1] else { return [] }
        return matches(#"<tr class="worker">(.*?)</tr>"#, in: body).map { row in
            matches(#"<td>([^<]*)</td>"#, in: row[1]).map { Self.unescape($0[1]) }
        }
    }

    private static func attributes(_ text: String) -> [String: String] {
        var result: [String: String] = [:]
        for match in matches(#"([a-zA-Z_:][-a-zA-Z0-9_:.]*)(?:="([^"]*)")?"#, in: text) {
            result[match[1]] = unescape(match[2])
        }
        return result
    }

    private static func unescape(_ text: String) -> String {
        text.replacingOccurrences(of: "&lt;", with: "<").replacingOccurrences(of: "&gt;", with: ">")
            .replacingOccurrences(of: "&quot;", with: "\"").replacingOccurrences(of: "&nbsp;", with: "\u{a0}")
            .replacingOccurrences(of: "&amp;", with: "&")
    }

    /// Every match of `pattern` (dot matches newlines), each as its capture groups ("" when a
    /// group did not take part), group 0 the whole match.
    private static func matches(_ pattern: String, in text: String) -> [[String]] {
        guard let regex = try? NSRegularExpression(pattern: pattern, options: [.dotMatchesLineSeparators]) else { return [] }
        let nsText = text as NSString
        return regex.matches(in: text, range: NSRange(location: 0, length: nsText.length)).map { match in
            (0..<match.numberOfRanges).map { index in
                let range = match.range(at: index)
                return range.location == NSNotFound ? "" : nsText.substring(with: range)
            }
        }
    }

    private func matches(_ pattern: String, in text: String) -> [[String]] { Self.matches(pattern, in: text) }
}
