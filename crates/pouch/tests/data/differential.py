"""Differential IMAP test: the same messages in Dovecot and in the Pouch
bridge; FETCH (RFC822.SIZE, ENVELOPE, BODYSTRUCTURE, BODY[], BODY[TEXT],
BODY[HEADER.FIELDS]) and SEARCH answers compared item by item.

Both servers are spoken to over loopback TCP with the same raw client; responses are parsed
into nested lists (quoted strings, literals, NIL, numbers), so quoting
choices (a literal here, a quoted string there) do not count as differences.
Strings are compared case-insensitively inside BODYSTRUCTURE only, where
RFC 2045 makes types, subtypes and parameter names case-insensitive.

usage: differential.py BRIDGE_PORT PASSWORD DOVECOT_COMMAND... -- MESSAGE...
"""
import json, socket, subprocess, sys

argv = sys.argv[1:]
port, password = int(argv[0]), argv[1]
sep = argv.index('--')
dovecot_cmd, files = argv[2:sep], argv[sep + 1:]


class Conn:
    def __init__(self, read, write):
        self.read, self.write, self.buf, self.n = read, write, b'', 0

    def _fill(self):
        chunk = self.read()
        if not chunk:
            raise SystemExit('connection closed: ' + self.buf.decode('latin-1'))
        self.buf += chunk

    def _line(self):
        while b'\r\n' not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b'\r\n', 1)
        return line + b'\r\n'

    def _response(self):
        """One response line, with the bytes of any literals it carries."""
        out = b''
        while True:
            line = self._line()
            out += line
            if line.endswith(b'}\r\n') and b'{' in line:
                n = int(line[line.rindex(b'{') + 1:-3].rstrip(b'+'))
                while len(self.buf) < n:
                    self._fill()
                out += self.buf[:n]
                self.buf = self.buf[n:]
            else:
                return out

    def command(self, text, literal=None):
        self.n += 1
        tag = b'x%d' % self.n
        if literal is None:
            self.write(tag + b' ' + text + b'\r\n')
        else:
            self.write(tag + b' ' + text + b' {%d+}\r\n' % len(literal) + literal + b'\r\n')
        untagged = []
        while True:
            r = self._response()
            if r.startswith(tag + b' '):
                if not r.startswith(tag + b' OK'):
                    raise SystemExit('%r failed: %r' % (text, r))
                return untagged
            if r.startswith(b'* '):
                untagged.append(r)

    def greeting(self):
        return self._response()


def parse(data, i=0):
    """Tokens of an IMAP response into nested lists."""
    out = []
    while i < len(data):
        c = data[i:i + 1]
        if c in (b' ', b'\r', b'\n'):
            i += 1
        elif c == b'(':
            sub, i = parse(data, i + 1)
            out.append(sub)
        elif c == b')':
            return out, i + 1
        elif c == b'"':
            j, s = i + 1, b''
            while data[j:j + 1] != b'"':
                if data[j:j + 1] == b'\\':
                    j += 1
                s += data[j:j + 1]
                j += 1
            out.append(s)
            i = j + 1
        elif c == b'{':
            j = data.index(b'}', i)
            n = int(data[i + 1:j].rstrip(b'+'))
            start = j + 3
            out.append(data[start:start + n])
            i = start + n
        else:
            j = i
            while j < len(data) and data[j:j + 1] not in b' ()\r\n':
                j += 1
            if data[j:j + 1] == b'[':
                pass
            atom = data[i:j]
            # BODY[...] keys keep their bracketed section.
            if data[j:j + 1] == b'[' or (b'[' in atom and b']' not in atom):
                k = data.index(b']', i) + 1
                atom = data[i:k]
                j = k
            out.append(None if atom == b'NIL' else atom)
            i = j
    return out, i


def fetch_items(conn, seq, items):
    resp = conn.command(b'FETCH %d (%s)' % (seq, items))
    fetch = [r for r in resp if b' FETCH ' in r][0]
    tokens, _ = parse(fetch[fetch.index(b'(', 0):])
    flat = tokens[0]
    return {flat[k].upper(): flat[k + 1] for k in range(0, len(flat), 2)}


def lower(x):
    if isinstance(x, list):
        return [lower(y) for y in x]
    return x.lower() if isinstance(x, bytes) else x


def show(x):
    if isinstance(x, list):
        return [show(y) for y in x]
    return x.decode('utf-8', 'replace') if isinstance(x, bytes) else x


# The bridge, over TCP on loopback.
sock = socket.create_connection(('127.0.0.1', port))
bridge = Conn(lambda: sock.recv(65536), sock.sendall)
bridge.greeting()
bridge.command(b'LOGIN "alice@pouch.local" "%s"' % password.encode())
# Dovecot, a private instance on its own Maildir, on a loopback port: the
# accepted connection is handed to Dovecot's imap process as its stdin and
# stdout, as inetd does (preauthenticated, so no system account is needed).
listener = socket.socket()
listener.bind(('127.0.0.1', 0))
listener.listen(1)
client = socket.create_connection(listener.getsockname())
accepted, _ = listener.accept()
proc = subprocess.Popen(dovecot_cmd, stdin=accepted.fileno(), stdout=accepted.fileno())
accepted.close()
dovecot = Conn(lambda: client.recv(65536), client.sendall)
dovecot.greeting()

for conn in (bridge, dovecot):
    conn.command(b'CREATE Differential')
    for f in files:
        conn.command(b'APPEND Differential (\\Seen)', open(f, 'rb').read())
    conn.command(b'SELECT Differential')

report = {'compared': 0, 'differences': []}
items = (b'UID RFC822.SIZE ENVELOPE BODYSTRUCTURE BODY.PEEK[] BODY.PEEK[TEXT] '
         b'BODY.PEEK[HEADER.FIELDS (FROM SUBJECT)]')
for seq in range(1, len(files) + 1):
    a, b = fetch_items(bridge, seq, items), fetch_items(dovecot, seq, items)
    for key in a:
        if key in (b'UID', b'FLAGS'):
            continue
        x, y = a[key], b.get(key)
        if key == b'BODYSTRUCTURE':
            x, y = lower(x), lower(y)
        report['compared'] += 1
        if x != y:
            report['differences'].append({'message': files[seq - 1], 'item': key.decode(),
                                          'bridge': show(x), 'dovecot': show(y)})

searches = [b'ALL', b'SUBJECT "cable"', b'FROM "bob"', b'TO "alice"', b'CC "dave"',
            b'BODY "Tuesday"', b'TEXT "treaty"', b'HEADER Message-ID "alt-3"',
            b'LARGER 400', b'SMALLER 400', b'NOT SUBJECT "cable"', b'OR FROM "carol" FROM "dave"',
            b'SEEN', b'UNSEEN', b'UID 2:4', b'2:*']
for q in searches:
    got = []
    for conn in (bridge, dovecot):
        resp = conn.command(b'SEARCH ' + q)
        line = [r for r in resp if r.startswith(b'* SEARCH')][0]
        got.append(sorted(int(n) for n in line[8:].split()))
    report['compared'] += 1
    if got[0] != got[1]:
        report['differences'].append({'search': q.decode(), 'bridge': got[0], 'dovecot': got[1]})

dovecot.command(b'LOGOUT')
print(json.dumps(report, indent=1))
