#!/usr/bin/env python3
# Writes the seed corpus under fuzz/seeds/<target>/ (run from fuzz/:
# `python3 make_seeds.py seeds`). The seeds are committed; this script is
# how they were made, so they can be changed in one place.
import os, sys
root = sys.argv[1]
def w(target, name, content):
    d = os.path.join(root, target)
    os.makedirs(d, exist_ok=True)
    data = content.encode('utf-8') if isinstance(content, str) else content
    with open(os.path.join(d, name), 'wb') as f:
        f.write(data)

notes = {
'inbound-plain': """---
tags:
  - agent/message
  - agent/message/inbound
agent: bot
sender: alice
ts: 2026-03-29T01:30:00.123Z
status: pending
---
Summarise [[Projects/Roadmap]] for me.
""",
'inbound-comments-trailing': """---
# written from my phone
title: "Quoted: yes"   # keep me
status: pending # was draft
tags: [agent/message/inbound] # flow list
agent: bot
---
Body with #followup and `#not/a/tag`.
""",
'inbound-crlf': "---\r\ntags:\r\n- agent/message/inbound\r\nagent: bot\r\nstatus: pending\r\n---\r\nhello from windows\r\n",
'inbound-bom': "\ufeff---\ntags: agent/message/inbound\nagent: bot\n---\nA note saved with a BOM.\n",
'inbound-handled': """---
tags:
  - agent/message
  - agent/message/inbound
agent: bot
status: handled
attempts: 1
handled_at: 2026-11-21T15:04:05.123Z
reply: "[[Inbox/bot/m1.reply]]"
thread: "[[Threads/bot/bot]]"
---
Done already.
""",
'inbound-error-block': """---
tags: [agent/message/inbound]
agent: bot
status: error
attempts: 3
error: |
  backend failed: exit status 1
  stderr: boom
keep: 1
---
retry me
""",
'quoted-keys': """---
"status": pending
'agent': bot
"key with: colon": value
'it''s': single
tags: ["agent/message/inbound", '#quoted']
---
quoted keys
""",
'nested-and-multiline': """---
tags:
  - agent/message/inbound
agent: bot
meta:
  project: vaultrunner
  owners:
    - alice
    - bob
summary: this is a plain scalar
  that goes on for
  three lines
folded: >
  folded text
  over lines
literal: |-
  keep
    indent
---
Body.
""",
'flow-mapping': "---\n{agent: bot, status: pending, tags: [agent/message/inbound]}\n---\nflow style front-matter\n",
'empty-front-matter': "---\n---\n#agent/message/inbound with only an inline tag\n",
'no-front-matter': "Just text #agent/message/inbound and a #tag/nested and #123 and C# and a#b.\n",
'unclosed': "---\ntags: [agent/message/inbound]\nagent: bot\nthis never closes\n",
'dots-close': "---\nagent: bot\ntags: agent/message/inbound\n...\nclosed with dots\n",
'body-dashes': """---
tags: [agent/message/inbound]
agent: bot
---
Above the rule.

---

status: not front-matter
---
Below #tag-in-body
""",
'callouts-embeds-tables': """---
tags:
  - agent/message/inbound
agent: bot
aliases: [Weekly, "Weekly: Q3"]
cssclasses: wide
---
> [!note] Callout title #in-callout
> Inside a callout with a [[link#heading|alias]].

![[Attachments/diagram.png]]
![[Other note#Section]]

| col #a | col b |
|--------|-------|
| `#code` | #cell |

- [ ] task #todo 📅 2026-04-01
- [x] done ✅ 2026-03-30

%% a comment #hidden %%
""",
'dataview': """---
tags: agent/message/inbound, project/x
agent: bot
rating:: 5
---
status:: pending
due:: [[2026-04-01]]
Inline [key:: value] and (other:: thing) fields, plus #dv/tag.
""",
'code-blocks': """---
tags: [agent/message/inbound]
agent: bot
---
```python
# not #a/tag
x = "#nope"
```

~~~
#also/not
~~~

    #indented/code

Text #real-tag and <span>#html</span> and http://x.y/#frag.
""",
'conflict': """---
tags: [agent/message/inbound]
agent: bot
<<<<<<< HEAD
status: pending
=======
status: handled
>>>>>>> theirs
---
conflicted
""",
'anchors-tags': """---
base: &b
  model: x
other: *b
tagged: !custom value
date: 2026-01-01
time: 12:30
octal: 0o17
hex: 0x1F
big: 123456789012345678901234567890
float: 1e400
inf: .inf
nan: .NaN
none: ~
empty:
tags: [agent/message/inbound]
agent: bot
---
""",
'duplicate-key': "---\nagent: bot\nagent: other\ntags: [agent/message/inbound]\n---\n",
'tabs-and-unicode': "---\ntitle: ünïcödé 日本語 🎉\nagent:\tbot\ntags:\n\t- agent/message/inbound\n---\nTabs are not YAML indentation. #ÜberTag #日本\n",
'list-not-mapping': "---\n- a\n- b\n---\nbody\n",
'mixed-newlines': "---\r\nagent: bot\nstatus: pending\r\ntags: [agent/message/inbound]\n---\nmixed\r\nlines\n",
'thread': """---
tags:
  - agent/thread
agent: bot
mode: single-threaded
definition: "[[Agents/bot]]"
backend: echo
status: ok
turn_count: 12
session: 5f0c3f0e-8d7b-4a57-9c43-1d2a3b4c5d6e
total_cost_usd: 0.0123
---
## Turn 1
""",
'outbound-reply': """---
tags:
  - agent/message
  - agent/message/outbound
agent: bot
direction: outbound
in_reply_to: "[[Inbox/bot/m1]]"
status: ok
---
Here is the answer. You wrote #agent/message/inbound.
""",
}

defs = {
'def-echo': "---\ntags: [agent/definition]\nname: bot\nbackend: echo\n---\nYou echo.\n",
'def-command-list': "---\ntags: [agent/definition]\nbackend: command\ncommand: [python3, scripts/agent.py, --fast, 3, true]\ntimeout: 90s\nstall_timeout: 10m\n---\nPrompt.\n",
'def-command-string': "---\ntags:\n  - agent/definition\nbackend: command\ncommand: \"./run.sh --flag 'a b'\"\nworkspace: Projects/x\nenabled: yes\n---\n",
'def-claude': "---\ntags: [agent/definition]\nname: writer\nbackend: claude\nmodel: claude-sonnet-4-5\nmode: multi-threaded\nsystem_prompt_mode: replace\ntimeout: 1h30m\nallow_delegation: true\n---\nYou write.\n",
'def-codex': "---\ntags: [agent/definition]\nbackend: codex\nmodel: gpt-5\nsystemPromptMode: append\ntimeout: 2d\nworkspace: ~/code\n---\n",
'def-gemini': "---\ntags: [agent/definition]\nbackend: Gemini\nmodel: gemini-2.5-pro\nmode: single\ntimeout: 500ms\n---\n",
'def-openai': "---\ntags: [agent/definition]\nbackend: openai\nmodel: gpt-4o-mini\nbase_url: http://127.0.0.1:8080/v1\napi_key_env: OPENAI_API_KEY\ntemperature: 0.2\nmax_tokens: 1024\nhistory_budget: 20000\nretry_base: 2s\nstream: true\n---\nBe brief.\n",
'def-anthropic': "---\ntags: [agent/definition]\nbackend: anthropic\nmodel: claude-haiku-4-5\nmax_tokens: 4096\nstall_timeout: 30s\nenabled: false\n---\n",
'def-bad-timeout': "---\ntags: [agent/definition]\nbackend: echo\ntimeout: 99999999999999999999d\n---\n",
'def-bad-types': "---\ntags: [agent/definition]\nbackend: [claude]\nname: [a, b]\ntimeout: {a: 1}\n---\n",
'def-bad-name': "---\ntags: [agent/definition]\nname: \"bad\\nname\"\n---\n",
'def-con': "---\ntags: [agent/definition]\nname: CON\n---\n",
'def-openai-no-model': "---\ntags: [agent/definition]\nbackend: openai\n---\n",
'def-inline-tag': "---\nbackend: echo\nmode: multi-threaded\n---\n#agent/definition\nA definition tagged in the body.\n",
}

jobs = {
'job-weekdays-berlin': "---\ntags: [agent/job]\nagent: bot\ncron: \"0 9 * * mon-fri\"\ntz: Europe/Berlin\nsubject: Morning\n---\nWhat is on today?\n",
'job-dst-gap-ny': "---\ntags: [agent/job]\nagent: bot\ncron: \"30 2 * * *\"\ntz: America/New_York\ncatch_up: skip\n---\nfires in the spring-forward gap\n",
'job-dst-repeat-london': "---\ntags: [agent/job]\nagent: bot\ncron: \"30 1 * * sun\"\ntz: Europe/London\nlast_run_at: 2026-10-25T00:30:00Z\n---\nfires in the repeated hour\n",
'job-lord-howe': "---\ntags: [agent/job]\nagent: bot\ncron: \"*/15 1-3 * * *\"\ntz: Australia/Lord_Howe\ncatchUp: once\n---\n",
'job-chatham': "---\ntags: [agent/job]\nagent: bot\ncron: \"45 2 1 */3 *\"\ntz: Pacific/Chatham\nenabled: true\n---\n",
'job-aliases': "---\ntags: [agent/job]\nagent: bot\ncron: \"@weekly\"\n---\nweekly\n",
'job-feb30': "---\ntags: [agent/job]\nagent: bot\ncron: \"0 0 30 2 *\"\n---\nnever\n",
'job-both-day-fields': "---\ntags: [agent/job]\nagent: bot\ncron: \"0 12 13 * 5\"\ntz: Asia/Kathmandu\nlastRunAt: 2026-03-13T06:15:00+00:00\n---\nFriday the 13th or any 13th or any Friday\n",
'job-bad-tz': "---\ntags: [agent/job]\nagent: bot\ncron: \"0 9 * * *\"\ntz: Mars/Olympus\n---\n",
'job-bad-cron': "---\ntags: [agent/job]\nagent: bot\ncron: \"0 9 * *\"\n---\n",
'job-every-minute': "---\ntags: [agent/job]\nagent: bot\ncron: \"* * * * *\"\ntz: Pacific/Apia\n---\n",
}

crons = ["0 9 * * mon-fri", "30 2 * * *", "*/15 1-3 * * *", "45 2 1 */3 *", "@hourly", "@daily",
         "@midnight", "@weekly", "@monthly", "@yearly", "@annually", "0 0 30 2 *", "0 12 13 * 5",
         "* * * * *", "0 0 29 2 *", "5,10,15 0-23/2 1-7 JAN-DEC SUN-SAT", "0 0 * * 7", "0 0 L * *",
         "0 0 * * 5#3", "0 0 * * 5L", "0 0 1W * *", "59 23 31 12 *", "0 0 ? * MON", "0 9 * * 1-5 # comment"]

for k, v in notes.items():
    for t in ['front_matter', 'tags', 'index']:
        w(t, k + '.md', v)
for k, v in defs.items():
    for t in ['definition', 'index', 'front_matter']:
        w(t, k + '.md', v)
for k, v in jobs.items():
    for t in ['job', 'index']:
        w(t, k + '.md', v)
for k in ['inbound-plain', 'inbound-comments-trailing', 'quoted-keys', 'nested-and-multiline', 'flow-mapping', 'anchors-tags', 'inbound-crlf']:
    w('definition', k + '.md', notes[k].replace('agent/message/inbound', 'agent/definition'))
    w('job', k + '.md', notes[k].replace('agent/message/inbound', 'agent/job'))

# yaml_diff: the front-matter blocks alone.
def yaml_of(t):
    t = t.lstrip('\ufeff')
    lines = t.split('\n')
    if not lines or lines[0].rstrip('\r') != '---':
        return None
    out = []
    for l in lines[1:]:
        if l.rstrip('\r') in ('---', '...'):
            return '\n'.join(out) + '\n'
        out.append(l)
    return None
for k, v in list(notes.items()) + list(defs.items()) + list(jobs.items()):
    y = yaml_of(v)
    if y is not None:
        w('yaml_diff', k + '.yaml', y)
extra = {
 'scalars': "a: 007\nb: +7\nc: 0x-1\nd: 1_000\ne: -0b1\nf: .5\ng: 5.\nh: 1e3\ni: ~\nj: Null\nk: tRue\nl: y\nm: 2026-11-21\nn: 15:04\no: \"\"\np: ''\nq: 'it''s'\nr: \"esc\\\"aped\"\n",
 'lists': "tags:\n  - a\n  - 'b'\n  - \"c\" # c\n  -\nother: [a, b ,c] # x\nempty: []\nnested: [a, [b]]\n",
 'mixed-indent': "a:\n  - x\n    - y\nb:\n - z\n",
 'key-shapes': "? complex\n: value\nkey : spaced\n\"quoted key\": 1\ntrue: 1\nnull: 2\n1: 3\n",
 'comments-crlf': "# top\r\n\r\na: 1 # one\r\n  # indented comment\r\nb:\r\n  # inside\r\n  - x # first\r\n\r\n  - 'y' # second\r\nc: \"z\"   # third\r\nd:\r\n",
 'unicode-breaks': "a: x\u2028y\nb: \u0085\nc: nbsp\u00a0here\n",
 'bomb': "a: &a [x, x, x]\nb: &b [*a, *a, *a]\nc: &c [*b, *b, *b]\nd: [*c, *c, *c]\n",
}
for k, v in extra.items():
    w('yaml_diff', k + '.yaml', v)

for i, c in enumerate(crons):
    w('cron', f'cron-{i:02}.txt', c)

# http_body: first byte odd = JSON, even = text.
bodies = [
 (1, '{"content": "hello", "subject": "Hi", "sender": "alice"}'),
 (1, '{"content": "delegate", "reply_to": "writer", "correlation_id": "c-1"}'),
 (1, '{"content": "x", "sender": "cli"}'),
 (1, '{"content": "x", "sender": "webhook:github"}'),
 (1, '{"subject": "no content"}'),
 (1, '{"content": "\\u00e9\\ud83c\\udf89 \\n multi", "reply_to": "bad name"}'),
 (1, '{"content": null}'),
 (1, '[1, 2, {"a": 1e400}]'),
 (1, '{"content": "a", "content": "b"}'),
 (0, 'plain text message\nwith lines\n'),
 (0, '{"content": "looks like json but sent as text"}'),
 (0, '{"action": "opened", "pull_request": {"number": 42, "title": "Fix #1", "labels": [], "merged": false, "ratio": 0.5, "big": 123456789012345678901234567890}}'),
 (0, '12345'),
 (0, '"a json string"'),
]
for i, (flag, body) in enumerate(bodies):
    w('http_body', f'body-{i:02}', bytes([flag]) + body.encode())
w('http_body', 'body-not-utf8', bytes([0]) + b'\xff\xfe bad utf8')
w('http_body', 'body-json-not-utf8', bytes([1]) + b'{"content": "\xff"}')

# index: several notes in one input, separated by NUL.
combos = [
 [defs['def-echo'], notes['inbound-plain'], jobs['job-weekdays-berlin']],
 [defs['def-claude'], notes['inbound-handled'], notes['thread'], notes['outbound-reply']],
 [notes['conflict'], defs['def-bad-timeout'], notes['inbound-error-block']],
 [defs['def-echo'], defs['def-inline-tag'], notes['no-front-matter'], notes['inbound-crlf']],
]
for i, c in enumerate(combos):
    w('index', f'combo-{i}.md', '\0'.join(c))
