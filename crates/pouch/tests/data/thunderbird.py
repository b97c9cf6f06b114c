"""Thunderbird, headless, against the Pouch bridge: it logs in over IMAP,
discovers the folders, downloads the inbox, and sends a mail over SMTP.

usage: thunderbird.py PROFILE_DIR IMAP_PORT SMTP_PORT PASSWORD EXPECTED_SUBJECT
                      [SEND_TO SEND_SUBJECT [REFUSED_TO]]
Sends "Written in Thunderbird" to bob@pouch.local unless SEND_TO and
SEND_SUBJECT say otherwise; with REFUSED_TO, sends the same mail there too
(a recipient the bridge should refuse). Prints one JSON line with what
Thunderbird saw: folders, inbox subjects, each inbox mail's SIO-Label header
(kept in Thunderbird's message database), and how each send ended.
"""
import json, os, socket, subprocess, sys, time
from marionette_driver.marionette import Marionette

profile, imap_port, smtp_port, password, expected = sys.argv[1:6]
send_to = sys.argv[6] if len(sys.argv) > 6 else 'bob@pouch.local'
send_subject = sys.argv[7] if len(sys.argv) > 7 else 'Written in Thunderbird'
refused_to = sys.argv[8] if len(sys.argv) > 8 else None
# Whose bridge it is (POUCH_TB_USER; alice@pouch.local by default).
user = os.environ.get('POUCH_TB_USER', 'alice@pouch.local')


def free_port():
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    p = s.getsockname()[1]
    s.close()
    return p


mport = free_port()
prefs = {
    'mail.accountmanager.accounts': 'account1,account2',
    'mail.accountmanager.defaultaccount': 'account1',
    'mail.accountmanager.localfoldersserver': 'server2',
    'mail.account.account1.identities': 'id1',
    'mail.account.account1.server': 'server1',
    'mail.account.account2.server': 'server2',
    'mail.server.server1.type': 'imap',
    'mail.server.server1.hostname': '127.0.0.1',
    'mail.server.server1.port': int(imap_port),
    'mail.server.server1.userName': user,
    'mail.server.server1.name': 'Pouch',
    'mail.server.server1.socketType': 0,
    'mail.server.server1.authMethod': 3,
    # Not before the password is stored: a password prompt would block the window.
    'mail.server.server1.login_at_startup': False,
    'mail.server.server1.check_new_mail': False,
    'mail.server.server2.type': 'none',
    'mail.server.server2.hostname': 'Local Folders',
    'mail.server.server2.userName': 'nobody',
    'mail.identity.id1.fullName': 'Alice',
    'mail.identity.id1.useremail': user,
    'mail.identity.id1.smtpServer': 'smtp1',
    'mail.identity.id1.valid': True,
    'mail.identity.id1.fcc_folder': 'imap://%s@127.0.0.1/Sent' % user.replace('@', '%40'),
    'mail.smtpservers': 'smtp1',
    'mail.smtp.defaultserver': 'smtp1',
    'mail.smtpserver.smtp1.hostname': '127.0.0.1',
    'mail.smtpserver.smtp1.port': int(smtp_port),
    'mail.smtpserver.smtp1.username': user,
    'mail.smtpserver.smtp1.authMethod': 3,
    'mail.smtpserver.smtp1.try_ssl': 0,
    'marionette.port': mport,
    'mail.shell.checkDefaultClient': False,
    'mail.provider.suppress_dialog_on_startup': True,
    'mail.spotlight.firstRunDone': True,
    'mailnews.start_page.enabled': False,
    'app.update.disabledForTesting': True,
    'datareporting.policy.dataSubmissionEnabled': False,
    'toolkit.telemetry.reportingpolicy.firstRun': False,
    'signon.rememberSignons': True,
    # Keep the SIO-Label header (RFC 7444) in the message database.
    'mailnews.customDBHeaders': 'sio-label',
}
os.makedirs(profile, exist_ok=True)
with open(os.path.join(profile, 'user.js'), 'w') as f:
    for k, v in prefs.items():
        f.write('user_pref(%s, %s);\n' % (json.dumps(k), json.dumps(v)))

tb = subprocess.Popen(
    ['thunderbird', '--headless', '--marionette', '-remote-allow-system-access',
     '--no-remote', '--profile', profile],
    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    # Wait for Marionette's port, then for a session (the window loads first).
    deadline = time.time() + 180
    while True:
        try:
            socket.create_connection(('127.0.0.1', mport), timeout=1).close()
            break
        except OSError:
            if time.time() > deadline or tb.poll() is not None:
                raise SystemExit('Thunderbird did not start Marionette')
            time.sleep(0.5)
    time.sleep(3)
    while True:
        try:
            m = Marionette(host='127.0.0.1', port=mport, socket_timeout=60)
            m.start_session()
            break
        except Exception:
            if time.time() > deadline:
                raise
            time.sleep(2)
    m.set_context(m.CONTEXT_CHROME)
    m.timeout.script = 120

    # Store the bridge password, as a user ticking "remember" would.
    m.execute_async_script('''
        const [password, user, resolve] = arguments;
        (async () => {
          for (const origin of ["imap://127.0.0.1", "smtp://127.0.0.1"]) {
            const li = Cc["@mozilla.org/login-manager/loginInfo;1"].createInstance(Ci.nsILoginInfo);
            li.init(origin, null, origin, user, password, "", "");
            await Services.logins.addLoginAsync(li);
          }
          resolve(true);
        })();
    ''', script_args=[password, user])

    # Discover the folders and download the inbox.
    seen = m.execute_async_script('''
        const [expected, resolve] = arguments;
        const { MailServices } = ChromeUtils.importESModule("resource:///modules/MailServices.sys.mjs");
        const server = MailServices.accounts.getIncomingServer("server1");
        server.performExpand(null);
        const started = Date.now();
        const poll = () => {
          const root = server.rootFolder;
          const inbox = root.getFolderWithFlags(Ci.nsMsgFolderFlags.Inbox);
          const folders = root.subFolders.map(f => decodeURIComponent(f.URI.split("/").pop()));
          const subjects = [];
          const labels = {};
          if (inbox) {
            try { inbox.updateFolder(null); } catch (e) {}
            for (const hdr of inbox.messages) {
              subjects.push(hdr.mime2DecodedSubject);
              labels[hdr.mime2DecodedSubject] = hdr.getStringProperty("sio-label");
            }
          }
          if ((subjects.includes(expected) && folders.length >= 6) || Date.now() - started > 90000) {
            resolve({ folders, subjects, labels });
          } else {
            setTimeout(poll, 500);
          }
        };
        poll();
    ''', script_args=[expected])

    # Compose and send a mail, as the Send button does.
    def send_mail(to, subject):
        return m.execute_async_script('''
        const [to, subject, user, resolve] = arguments;
        const { MailServices } = ChromeUtils.importESModule("resource:///modules/MailServices.sys.mjs");
        const identity = MailServices.accounts.getIdentity("id1");
        const fields = Cc["@mozilla.org/messengercompose/composefields;1"].createInstance(Ci.nsIMsgCompFields);
        fields.from = "Alice <" + user + ">";
        fields.to = to;
        fields.subject = subject;
        fields.body = "Sent by Thunderbird through the Pouch bridge.\\r\\n";
        // What the compose window does with the identity's "place a copy in
        // Sent" (on by default): the copy goes to the identity's Sent folder.
        fields.fcc = identity.fccFolder;
        const send = Cc["@mozilla.org/messengercompose/send;1"].createInstance(Ci.nsIMsgSend);
        const listener = {
          QueryInterface: ChromeUtils.generateQI(["nsIMsgSendListener"]),
          onStartSending() {}, onProgress() {}, onStatus() {}, onGetDraftFolderURI() {},
          onSendNotPerformed(id, status) { resolve("not performed " + status); },
          onTransportSecurityError() { resolve("security error"); },
          // The copy to Sent follows on its own (this listener is not told of it).
          onStopSending(id, status, msg, file) { resolve(Components.isSuccessCode(status) ? "sent" : "failed " + status + " " + msg); },
          onStopCopy() {},
        };
        send.createAndSendMessage(null, identity, "account1", fields, false, false,
          Ci.nsIMsgSend.nsMsgDeliverNow, null, "text/plain", fields.body, null, null,
          listener, null, "", Ci.nsIMsgCompType.New);
    ''', script_args=[to, subject, user])

    sent = send_mail(send_to, send_subject)
    refused = send_mail(refused_to, send_subject) if refused_to else None
    print(json.dumps({'folders': seen['folders'], 'subjects': seen['subjects'],
                      'labels': seen['labels'], 'sent': sent, 'refused': refused}), flush=True)
    try:
        m.delete_session()
    except Exception:
        pass
finally:
    tb.terminate()
    try:
        tb.wait(20)
    except Exception:
        tb.kill()
