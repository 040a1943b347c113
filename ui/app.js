// Berth's web UI: a few views over the registry's own API. No framework
// and no build step (docs/design/ui.md): the browser routes under /ui/,
// every request carries the X-Berth-UI header that makes the session
// cookie count, and the cookie itself is HttpOnly: no secret is ever
// readable here.

const main = document.getElementById("main");
const account = document.getElementById("account");
const PAGE = 30;
let session = { auth: true, user: null, admin: false };

// ---- helpers ---------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

async function api(path, options = {}) {
  const headers = { "X-Berth-UI": "1", Accept: "application/json", ...(options.headers || {}) };
  if (options.json !== undefined) {
    headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(options.json);
  }
  const response = await fetch(path, { ...options, headers, credentials: "same-origin" });
  let body = null;
  const type = response.headers.get("content-type") || "";
  if (type.includes("json")) body = await response.json().catch(() => null);
  return { status: response.status, ok: response.ok, body, headers: response.headers };
}

// What went wrong, in words a user can act on.
function problem(result, what) {
  if (result.status === 401) {
    return session.user
      ? `Your session has ended: log in again to ${what}.`
      : `You need to log in to ${what}.`;
  }
  if (result.status === 403) {
    const detail = result.body && result.body.errors && result.body.errors[0];
    const why = detail && (typeof detail.detail === "string" ? detail.detail : detail.message);
    return `You may not ${what}${why ? ` (${why})` : ""}.`;
  }
  if (result.status === 404) return `Not found: there is nothing to ${what}.`;
  const detail = result.body && result.body.errors && result.body.errors[0];
  return `Could not ${what}: ${detail ? detail.detail || detail.message : `HTTP ${result.status}`}.`;
}

function show(...nodes) {
  main.replaceChildren(...nodes);
  main.focus({ preventScroll: true });
}

function link(href, text, attrs = {}) {
  return el("a", { href, "data-link": true, ...attrs }, text);
}

function repoUrl(name) {
  return `/ui/r/${name}`;
}

// An image by tag or digest: names never hold a ":", so the first one ends
// the name.
function imageUrl(name, reference) {
  return `/ui/i/${name}:${reference}`;
}

function short(digest) {
  return digest.replace(/^sha256:/, "").slice(0, 12);
}

// "3 days ago" for an RFC 3339 time.
function ago(iso) {
  const seconds = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  const steps = [[60, "second"], [60, "minute"], [24, "hour"], [30, "day"], [12, "month"], [Infinity, "year"]];
  let value = seconds;
  for (const [per, unit] of steps) {
    if (value < per) {
      const whole = Math.floor(value);
      return whole <= 1 && unit === "second" ? "just now" : `${whole} ${unit}${whole === 1 ? "" : "s"} ago`;
    }
    value /= per;
  }
  return iso;
}

function size(bytes) {
  if (bytes === undefined || bytes === null) return "?";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${unit ? value.toFixed(1) : value} ${units[unit]}`;
}

const MANIFEST_TYPES = [
  "application/vnd.oci.image.index.v1+json",
  "application/vnd.oci.image.manifest.v1+json",
  "application/vnd.docker.distribution.manifest.list.v2+json",
  "application/vnd.docker.distribution.manifest.v2+json",
].join(", ");

function copyButton(text, label) {
  return el("button", {
    type: "button",
    "aria-label": label,
    onclick: async (event) => {
      const button = event.currentTarget;
      try {
        await navigator.clipboard.writeText(text);
        button.textContent = "Copied";
      } catch {
        button.textContent = "Select and copy";
      }
      setTimeout(() => (button.textContent = "Copy"), 1500);
    },
  }, "Copy");
}

function pullCommand(reference) {
  const command = `docker pull ${location.host}/${reference}`;
  return el("div", { class: "pull" }, el("code", {}, command), copyButton(command, `Copy ${command}`));
}

// ---- session ---------------------------------------------------------------

async function loadSession() {
  const result = await api("/ui/api/session");
  if (result.ok && result.body) session = result.body;
  renderAccount();
}

function renderAccount() {
  const items = [];
  if (!session.auth) {
    items.push(el("span", { class: "muted" }, "Access control is off"));
  } else if (session.user) {
    items.push(el("span", {}, "Signed in as ", el("strong", {}, session.user)));
    items.push(link("/ui/robots", "Robots"));
    if (session.admin) items.push(link("/ui/namespaces", "Namespaces"));
    items.push(el("button", { type: "button", onclick: logout }, "Log out"));
  } else {
    items.push(link(`/ui/login?next=${encodeURIComponent(location.pathname + location.search)}`, "Log in", { class: "button" }));
  }
  account.replaceChildren(...items);
}

async function logout() {
  await api("/ui/api/session", { method: "DELETE" });
  session = { ...session, user: null, admin: false };
  renderAccount();
  navigate("/ui/");
}

function loginView(params) {
  const next = params.get("next") || "/ui/";
  const message = el("p", { role: "alert", class: "error" });
  const form = el("form", { class: "login panel", onsubmit: async (event) => {
    event.preventDefault();
    const data = new FormData(form);
    const submit = form.querySelector("button");
    submit.disabled = true;
    const result = await api("/ui/api/session", {
      method: "POST",
      json: { username: data.get("username"), password: data.get("password") },
    });
    submit.disabled = false;
    if (!result.ok) {
      message.textContent = result.status === 429
        ? "Too many failed logins: wait a minute and try again."
        : (result.body && result.body.error) || `The login failed (HTTP ${result.status}).`;
      return;
    }
    session = result.body;
    renderAccount();
    navigate(next.startsWith("/ui/") ? next : "/ui/");
  } },
    el("h1", {}, "Log in"),
    el("p", { class: "muted" }, "The same user name and password (or robot account) as docker login."),
    el("label", { for: "username" }, "User name"),
    el("input", { id: "username", name: "username", autocomplete: "username", required: true }),
    el("label", { for: "password" }, "Password"),
    el("input", { id: "password", name: "password", type: "password", autocomplete: "current-password", required: true }),
    el("p", {}, el("button", { type: "submit", class: "primary" }, "Log in")),
    message,
  );
  show(form);
  form.querySelector("input").focus();
}

// ---- repositories ------------------------------------------------------------

async function repositoriesView(params) {
  const query = params.get("q") || "";
  const last = params.get("last") || "";
  const search = el("input", {
    type: "search", name: "q", value: query, placeholder: "Search repositories",
    "aria-label": "Search repositories",
  });
  const form = el("form", { class: "toolbar", role: "search", onsubmit: (event) => {
    event.preventDefault();
    const value = search.value.trim();
    navigate(value ? `/ui/?q=${encodeURIComponent(value)}` : "/ui/");
  } }, search, el("button", { type: "submit" }, "Search"));
  const list = el("ul", { class: "repos", "aria-label": "Repositories" });
  const status = el("p", { class: "muted", role: "status" }, "Loading…");
  const pager = el("div", { class: "pager" });
  show(el("h1", {}, "Repositories"), form, status, list, pager);
  let path = `/v2/_berth/repositories?n=${PAGE}&q=${encodeURIComponent(query)}`;
  if (last) path += `&last=${encodeURIComponent(last)}`;
  const result = await api(path);
  if (!result.ok) {
    status.textContent = problem(result, "list repositories");
    status.className = "error";
    return;
  }
  const repositories = result.body.repositories;
  status.textContent = repositories.length
    ? ""
    : query ? `No repository you may pull matches “${query}”.` : (session.user
      ? "No repository you may pull yet."
      : "No public repository yet. Log in to see yours.");
  for (const repo of repositories) {
    list.append(el("li", { class: "panel repo" },
      el("div", {},
        link(repoUrl(repo.name), repo.name),
        repo.public ? el("span", { class: "badge public" }, "public") : el("span", { class: "badge" }, "private"),
        repo.empty ? el("span", { class: "badge empty" }, "empty") : null,
        repo.description ? el("div", { class: "muted" }, repo.description) : null),
      repo.empty ? null : el("code", { class: "muted" }, `${location.host}/${repo.name}`)));
  }
  if (last) pager.append(link(query ? `/ui/?q=${encodeURIComponent(query)}` : "/ui/", "First page", { class: "button" }));
  if (result.body.more && repositories.length) {
    const after = repositories[repositories.length - 1].name;
    pager.append(link(`/ui/?q=${encodeURIComponent(query)}&last=${encodeURIComponent(after)}`, "Next page", { class: "button" }));
  }
}

async function repositoryView(name, params) {
  const last = params.get("last") || "";
  const sort = params.get("sort") === "newest" ? "newest" : "name";
  const filter = params.get("q") || "";
  const heading = el("h1", {}, name);
  const about = el("div");
  const tags = el("tbody");
  const status = el("p", { class: "muted", role: "status" }, "Loading…");
  const pager = el("div", { class: "pager" });
  const settingsPanel = el("div");
  const pageUrl = (extra = {}) => {
    const query = new URLSearchParams({ ...(sort === "newest" ? { sort } : {}), ...(filter ? { q: filter } : {}), ...extra });
    const text = query.toString();
    return `${repoUrl(name)}${text ? `?${text}` : ""}`;
  };
  const search = el("input", { type: "search", name: "q", value: filter, "aria-label": "Filter tags", placeholder: "Filter tags" });
  const order = el("select", { name: "sort", "aria-label": "Sort tags by" },
    el("option", { value: "name", selected: sort === "name" }, "Name"),
    el("option", { value: "newest", selected: sort === "newest" }, "Newest first"));
  const apply = () => {
    const query = new URLSearchParams();
    if (order.value === "newest") query.set("sort", "newest");
    if (search.value.trim()) query.set("q", search.value.trim());
    const text = query.toString();
    navigate(`${repoUrl(name)}${text ? `?${text}` : ""}`);
  };
  order.addEventListener("change", apply);
  const toolbar = el("form", { class: "toolbar", role: "search", "aria-label": "Tags",
    onsubmit: (event) => { event.preventDefault(); apply(); } },
    search, order, el("button", { type: "submit" }, "Filter"));
  show(link("/ui/", "← Repositories"), heading, about,
    el("h2", {}, "Tags"), toolbar, status,
    el("div", { class: "scroll panel" }, el("table", {},
      el("thead", {}, el("tr", {},
        el("th", { scope: "col" }, "Tag"),
        el("th", { scope: "col", class: "optional" }, "Digest"),
        el("th", { scope: "col" }, "Size"),
        el("th", { scope: "col", class: "optional" }, "Platforms"),
        el("th", { scope: "col" }, "Pushed"),
        el("th", { scope: "col" }, "Pull"))),
      tags)),
    pager, settingsPanel);

  let path = `/v2/${name}/_berth/tags?n=${PAGE}&sort=${sort}`;
  if (filter) path += `&q=${encodeURIComponent(filter)}`;
  if (last) path += `&last=${encodeURIComponent(last)}`;
  const [settings, listed] = await Promise.all([api(`/v2/${name}/_berth/settings`), api(path)]);
  if (!settings.ok) {
    status.textContent = problem(settings, `see ${name}`);
    status.className = "error";
    return;
  }
  const s = settings.body;
  // Through el(), which leaves out what is null (append would write "null").
  about.append(el("div", {},
    s.public ? el("span", { class: "badge public" }, "public: anyone may pull") : el("span", { class: "badge" }, "private"),
    s.description ? el("p", {}, s.description) : null,
    el("p", { class: "muted" }, `You may: ${s.actions.length ? s.actions.join(", ") : "nothing"}.`)));
  if (!listed.ok) {
    status.textContent = listed.status === 404 ? "No tags yet: push one." : problem(listed, `list the tags of ${name}`);
  } else {
    const page = listed.body;
    status.textContent = page.tags.length
      ? `${page.total} tag${page.total === 1 ? "" : "s"}${filter ? ` matching “${filter}”` : ""}.`
      : filter ? `No tag matches “${filter}”.` : "No tags yet: push one.";
    for (const tag of page.tags) {
      tags.append(el("tr", {},
        el("td", {}, link(imageUrl(name, tag.tag), tag.tag, { class: "tag" })),
        el("td", { class: "optional mono muted" }, tag.digest ? short(tag.digest) : "missing"),
        el("td", {}, tag.size === null ? (tag.platforms.length ? "per platform" : "?") : size(tag.size)),
        el("td", { class: "optional" }, tag.platforms.join(", ")),
        el("td", {}, tag.updated_at ? el("time", { datetime: tag.updated_at, title: tag.updated_at }, ago(tag.updated_at)) : "?"),
        el("td", {}, pullCommand(`${name}:${tag.tag}`))));
    }
    if (last) pager.append(link(pageUrl(), "First page", { class: "button" }));
    if (page.next) pager.append(link(pageUrl({ last: page.next }), "Next page", { class: "button" }));
  }
  if (s.actions.includes("manage")) settingsPanel.append(settingsForm(name, s));
}

const ACTIONS = ["pull", "push", "delete", "manage"];

// An editor of grants ({subject, actions}); `read()` gives the rows filled in.
function grantsEditor(grants, label) {
  const body = el("tbody");
  const addRow = (grant = { subject: "", actions: ["pull"] }) => {
    const row = el("tr", {},
      el("td", {}, el("input", {
        class: "subject", value: grant.subject, placeholder: "user:NAME, group:NAME or robot:NAME",
        "aria-label": "Subject",
      })),
      ACTIONS.map((action) => el("td", {}, el("input", {
        type: "checkbox", value: action, checked: grant.actions.includes(action),
        "aria-label": action,
      }))),
      el("td", {}, el("button", { type: "button", "aria-label": "Remove this grant",
        onclick: () => row.remove() }, "Remove")));
    body.append(row);
  };
  grants.forEach(addRow);
  const editor = el("div", { role: "group", "aria-label": label },
    el("table", {},
      el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "Subject"),
        ACTIONS.map((a) => el("th", { scope: "col" }, a)), el("th", {}, ""))),
      body),
    el("p", {}, el("button", { type: "button", onclick: () => addRow() }, "Add a grant")));
  editor.read = () => [...body.querySelectorAll("tr")].map((row) => ({
    subject: row.querySelector("input.subject").value.trim(),
    actions: [...row.querySelectorAll("input[type=checkbox]:checked")].map((box) => box.value),
  })).filter((grant) => grant.subject);
  return editor;
}

function settingsForm(name, current) {
  const message = el("p", { role: "status" });
  const visibility = el("select", { id: "visibility", name: "visibility" },
    el("option", { value: "private", selected: current.visibility === "private" }, "Private: who the rules and grants allow"),
    el("option", { value: "public", selected: current.visibility === "public", disabled: !current.public_allowed },
      current.public_allowed ? "Public: anyone may pull" : "Public: not allowed here by the registry's configuration"));
  const description = el("textarea", { id: "description", name: "description", maxlength: "4096" });
  description.value = current.description || "";
  const grants = grantsEditor(current.grants || [], "Grants on this repository");
  const form = el("form", { class: "panel", "aria-label": "Repository settings", onsubmit: async (event) => {
    event.preventDefault();
    const result = await api(`/v2/${name}/_berth/settings`, {
      method: "PUT",
      json: { visibility: visibility.value, description: description.value, grants: grants.read() },
    });
    if (result.ok) {
      message.textContent = "Saved: in force now.";
      message.className = "notice";
      setTimeout(() => route(), 600);
    } else {
      message.textContent = problem(result, `change the settings of ${name}`);
      message.className = "error";
    }
  } },
    el("h2", {}, "Settings"),
    el("label", { for: "visibility" }, "Visibility"), visibility,
    el("label", { for: "description" }, "Description"), description,
    el("h3", {}, "Grants"),
    el("p", { class: "muted" }, "Added to what the configuration's rules allow; they never take a right away."),
    grants,
    el("p", {}, el("button", { type: "submit", class: "primary" }, "Save settings")),
    message);
  return form;
}

// ---- namespaces (admins) ----------------------------------------------------------

async function namespacesView() {
  const status = el("p", { class: "muted", role: "status" }, "Loading…");
  const list = el("div");
  show(el("h1", {}, "Namespaces"),
    el("p", { class: "muted" }, "A namespace hands every repository below it (team/… for team) to whom its grants name."),
    status, list, namespaceForm(null));
  const result = await api("/v2/_berth/namespaces");
  if (!result.ok) {
    status.textContent = problem(result, "manage namespaces");
    status.className = "error";
    return;
  }
  status.textContent = result.body.namespaces.length ? "" : "No namespace yet.";
  for (const namespace of result.body.namespaces) list.append(namespaceForm(namespace));
}

function namespaceForm(namespace) {
  const creating = namespace === null;
  const message = el("p", { role: "status" });
  const nameInput = el("input", { id: `ns-${creating ? "new" : namespace.namespace}`, required: true,
    value: creating ? "" : namespace.namespace, readonly: !creating, "aria-label": "Namespace name" });
  const description = el("input", { "aria-label": "Description", value: creating ? "" : namespace.description });
  const grants = grantsEditor(creating ? [] : namespace.grants, "Grants on the namespace");
  const form = el("form", { class: "panel", "aria-label": creating ? "New namespace" : `Namespace ${namespace.namespace}`,
    onsubmit: async (event) => {
      event.preventDefault();
      const name = nameInput.value.trim();
      const result = await api(`/v2/_berth/namespaces/${name}`, {
        method: "PUT", json: { description: description.value, grants: grants.read() },
      });
      if (result.ok) navigate("/ui/namespaces");
      else {
        message.textContent = problem(result, `save the namespace ${name}`);
        message.className = "error";
      }
    } },
    el("h2", {}, creating ? "New namespace" : namespace.namespace),
    creating ? [el("label", { for: nameInput.id }, "Name"), nameInput] : null,
    el("label", {}, "Description", description),
    el("h3", {}, "Grants"), grants,
    el("p", {},
      el("button", { type: "submit", class: "primary" }, creating ? "Create namespace" : "Save namespace"), " ",
      creating ? null : el("button", { type: "button", class: "danger", onclick: async () => {
        if (!confirm(`Delete the namespace ${namespace.namespace}? Its repositories stay.`)) return;
        const result = await api(`/v2/_berth/namespaces/${namespace.namespace}`, { method: "DELETE" });
        if (result.ok) navigate("/ui/namespaces");
        else {
          message.textContent = problem(result, "delete the namespace");
          message.className = "error";
        }
      } }, "Delete namespace")),
    message);
  return form;
}

// ---- robot accounts ---------------------------------------------------------------

// `made`: a robot just created, whose secret is shown above the list.
async function robotsView(made) {
  const status = el("p", { class: "muted", role: "status" }, "Loading…");
  const list = el("div");
  const secret = el("div");
  show(el("h1", {}, "Robot accounts"),
    el("p", { class: "muted" }, "Credentials for CI: a robot logs in as robot$NAME with its secret and may do what its grants say."),
    secret, status, list, robotForm());
  if (made) showSecret(secret, made);
  const result = await api("/v2/_berth/robots");
  if (!result.ok) {
    status.textContent = problem(result, "manage robot accounts");
    status.className = "error";
    return;
  }
  const robots = result.body.robots;
  status.textContent = robots.length ? "" : (result.body.admin
    ? "No robot yet."
    : "No robot you manage: a namespace's managers make robots for it.");
  if (!robots.length) return;
  list.append(el("div", { class: "scroll panel" }, el("table", {},
    el("caption", { class: "muted" }, "Robots you manage"),
    el("thead", {}, el("tr", {}, ["Robot", "Namespace", "Grants", "Created", "Expires", "Actions"].map((h) =>
      el("th", { scope: "col" }, h)))),
    el("tbody", {}, robots.map((robot) => robotRow(robot, secret))))));
}

function robotRow(robot, secret) {
  const message = el("span", { role: "status" });
  const fromFile = robot.source === "file";
  const revoke = async () => {
    if (!confirm(`Revoke ${robot.username}? Its secret stops working at once.`)) return;
    const result = await api(`/v2/_berth/robots/${robot.name}`, { method: "DELETE" });
    if (result.ok) navigate("/ui/robots");
    else message.textContent = problem(result, `revoke ${robot.username}`);
  };
  const renew = async () => {
    if (!confirm(`Make a new secret for ${robot.username}? The current one stops working.`)) return;
    const result = await api(`/v2/_berth/robots/${robot.name}/secret`, { method: "POST" });
    if (result.ok) showSecret(secret, result.body);
    else message.textContent = problem(result, `renew the secret of ${robot.username}`);
  };
  return el("tr", {},
    el("th", { scope: "row" }, el("code", {}, robot.username)),
    el("td", {}, robot.namespace || el("span", { class: "muted" }, fromFile ? "robot file" : "(admin)")),
    el("td", {}, robot.grants.map((grant) => el("code", { class: "grant" }, grant))),
    el("td", {}, robot.created_at, robot.created_by ? ` by ${robot.created_by}` : ""),
    el("td", {}, robot.expires_at ? `${robot.expires_at}${robot.expired ? " (expired)" : ""}` : "never"),
    el("td", {}, fromFile
      ? el("span", { class: "muted" }, "berth robot")
      : [el("button", { type: "button", onclick: renew, "aria-label": `New secret for ${robot.username}` }, "New secret"), " ",
        el("button", { type: "button", class: "danger", onclick: revoke, "aria-label": `Revoke ${robot.username}` }, "Revoke")],
    message));
}

// The secret, shown once: it is not kept anywhere the page can read again.
function showSecret(into, robot) {
  const login = `docker login ${location.host} -u '${robot.username}' --password-stdin`;
  into.replaceChildren(el("section", { class: "panel notice", role: "alert", "aria-label": "New robot secret" },
    el("h2", {}, `Secret of ${robot.username}`),
    el("p", {}, "Copy it now: it is shown only this once."),
    el("div", { class: "pull" }, el("code", { class: "secret" }, robot.secret), copyButton(robot.secret, "Copy the secret")),
    el("p", {}, "Log in with it (the secret on standard input):"),
    el("div", { class: "pull" }, el("code", {}, login), copyButton(login, "Copy the login command"))));
  into.scrollIntoView();
}

function robotForm() {
  const message = el("p", { role: "status" });
  const name = el("input", { id: "robot-name", required: true, pattern: "[a-z0-9]+([._\\-][a-z0-9]+)*", maxlength: "64" });
  const namespace = el("input", { id: "robot-namespace", placeholder: session.admin ? "none: any grants" : "team" });
  const grants = el("textarea", { id: "robot-grants", required: true, rows: "3", placeholder: "team/*:pull,push" });
  const expires = el("select", { id: "robot-expires" },
    ["30d", "90d", "365d"].map((d) => el("option", { value: d, selected: d === "90d" }, `in ${d.slice(0, -1)} days`)),
    el("option", { value: "" }, "never"));
  return el("form", { class: "panel", "aria-label": "New robot", onsubmit: async (event) => {
    event.preventDefault();
    const body = {
      name: name.value.trim(),
      grants: grants.value.split("\n").map((g) => g.trim()).filter(Boolean),
    };
    if (namespace.value.trim()) body.namespace = namespace.value.trim();
    if (expires.value) body.expires_in = expires.value;
    const result = await api("/v2/_berth/robots", { method: "POST", json: body });
    if (result.ok) await robotsView(result.body);
    else {
      message.textContent = problem(result, `create the robot ${body.name}`);
      message.className = "error";
    }
  } },
    el("h2", {}, "New robot"),
    el("label", { for: name.id }, "Name (lowercase letters, digits, . _ -)"), name,
    el("label", { for: namespace.id }, "Namespace"), namespace,
    el("label", { for: grants.id }, "Grants, one per line: PATTERN:ACTIONS (pull, push, delete)"), grants,
    el("label", { for: expires.id }, "Expires"), expires,
    el("p", {}, el("button", { type: "submit", class: "primary" }, "Create robot")),
    message);
}

// ---- an image ------------------------------------------------------------------

async function imageView(name, reference) {
  const byTag = !reference.includes(":");
  const status = el("p", { class: "muted", role: "status" }, "Loading…");
  const body = el("div");
  show(link(repoUrl(name), `← ${name}`), el("h1", {}, `${name}${byTag ? ":" : "@"}${reference}`), status, body);
  const [manifest, settings] = await Promise.all([
    api(`/v2/${name}/manifests/${reference}`, { headers: { Accept: MANIFEST_TYPES } }),
    api(`/v2/${name}/_berth/settings`),
  ]);
  if (!manifest.ok) {
    status.textContent = problem(manifest, `see ${name}:${reference}`);
    status.className = "error";
    return;
  }
  const actions = settings.ok ? settings.body.actions : [];
  const digest = manifest.headers.get("docker-content-digest");
  const m = manifest.body;
  status.textContent = "";
  body.append(el("div", { class: "panel" },
    el("p", {}, "Digest ", el("code", {}, digest)),
    el("p", { class: "muted" }, m.mediaType || "(no media type)"),
    pullCommand(`${name}@${digest}`),
    byTag ? pullCommand(`${name}:${reference}`) : null));

  if (m.manifests) {
    const rows = m.manifests.map((entry) => el("tr", {},
      el("td", {}, entry.platform ? [entry.platform.os, entry.platform.architecture, entry.platform.variant].filter(Boolean).join("/") : "(no platform)"),
      el("td", {}, link(imageUrl(name, entry.digest), short(entry.digest))),
      el("td", { class: "optional" }, size(entry.size))));
    body.append(el("h2", {}, "Platforms"), el("table", { class: "panel" },
      el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "Platform"), el("th", { scope: "col" }, "Manifest"),
        el("th", { scope: "col", class: "optional" }, "Size"))),
      el("tbody", {}, rows)));
  } else {
    await imageDetails(name, m, body);
  }
  await referrers(name, digest, body);
  if (byTag) await tagHistory(name, reference, digest, actions, body);
  if (actions.includes("delete")) {
    body.append(el("h2", {}, "Delete"), el("div", { class: "panel" },
      el("p", { class: "muted" }, byTag
        ? `Removes the tag ${reference}; the image stays while other tags or digests reference it.`
        : "Removes this manifest from the repository, and the tags that point at it."),
      el("button", { type: "button", class: "danger", onclick: async () => {
        if (!confirm(`Delete ${name}${byTag ? ":" : "@"}${reference}?`)) return;
        const result = await api(`/v2/${name}/manifests/${reference}`, { method: "DELETE" });
        if (result.ok) navigate(repoUrl(name));
        else alert(problem(result, `delete ${reference}`));
      } }, byTag ? `Delete tag ${reference}` : "Delete manifest")));
  }
}

async function imageDetails(name, m, body) {
  const layers = m.layers || [];
  const total = layers.reduce((sum, layer) => sum + (layer.size || 0), 0);
  body.append(el("h2", {}, `Layers (${layers.length}, ${size(total)})`), el("table", { class: "panel" },
    el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "Layer"), el("th", { scope: "col" }, "Size"),
      el("th", { scope: "col", class: "optional" }, "Type"))),
    el("tbody", {}, layers.map((layer) => el("tr", {},
      el("td", { class: "mono" }, short(layer.digest)),
      el("td", {}, size(layer.size)),
      el("td", { class: "optional muted" }, layer.mediaType))))));
  if (!m.config) return;
  // Blobs come as application/octet-stream: read the config as JSON here.
  const response = await fetch(`/v2/${name}/blobs/${m.config.digest}`, {
    headers: { "X-Berth-UI": "1" }, credentials: "same-origin",
  });
  if (!response.ok) return;
  let c;
  try {
    c = JSON.parse(await response.text());
  } catch {
    return;
  }
  const run = c.config || {};
  const facts = [
    ["Platform", [c.os, c.architecture, c.variant].filter(Boolean).join("/")],
    ["Created", c.created],
    ["Entrypoint", run.Entrypoint && run.Entrypoint.join(" ")],
    ["Command", run.Cmd && run.Cmd.join(" ")],
    ["Working directory", run.WorkingDir],
    ["User", run.User],
  ].filter(([, value]) => value);
  body.append(el("h2", {}, "Configuration"), el("div", { class: "panel" },
    el("dl", { class: "facts" }, facts.map(([key, value]) => [el("dt", {}, key), el("dd", { class: "mono" }, value)])),
    run.Env && run.Env.length ? [el("h3", {}, "Environment"), el("ul", { class: "mono" }, run.Env.map((e) => el("li", {}, e)))] : null,
    run.Labels && Object.keys(run.Labels).length ? [el("h3", {}, "Labels"),
      el("ul", { class: "mono" }, Object.entries(run.Labels).map(([k, v]) => el("li", {}, `${k}=${v}`)))] : null,
    c.history && c.history.length ? [el("h3", {}, "Build history"),
      el("ol", { class: "mono history" }, c.history.map((h) => el("li", {}, h.created_by || h.comment || "(step)")))] : null));
}

async function referrers(name, digest, body) {
  const result = await api(`/v2/${name}/referrers/${digest}`);
  if (!result.ok || !result.body || !result.body.manifests || !result.body.manifests.length) return;
  body.append(el("h2", {}, "Referrers (signatures, SBOMs, attestations)"), el("table", { class: "panel" },
    el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "Artifact type"), el("th", { scope: "col" }, "Manifest"))),
    el("tbody", {}, result.body.manifests.map((r) => el("tr", {},
      el("td", {}, r.artifactType || "(none)"),
      el("td", {}, link(imageUrl(name, r.digest), short(r.digest))))))));
}

async function tagHistory(name, tag, current, actions, body) {
  const result = await api(`/v2/${name}/_berth/tags/${tag}/history?n=20`);
  if (!result.ok) return;
  const mayRollBack = actions.includes("push") && actions.includes("delete");
  const message = el("p", { role: "status" });
  const rows = result.body.history.map((change, index) => el("tr", {},
    el("td", {}, change.time.replace("T", " ").replace(/\.\d+Z$/, " UTC")),
    el("td", { class: "mono" }, change.deleted ? "(deleted)" : link(imageUrl(name, change.digest), short(change.digest))),
    el("td", {}, index > 0 && !change.deleted && change.digest !== current && mayRollBack
      ? el("button", { type: "button", onclick: async () => {
        if (!confirm(`Point ${name}:${tag} back at ${short(change.digest)}?`)) return;
        const done = await api(`/v2/${name}/_berth/tags/${tag}/rollback?to=${change.digest}`, { method: "POST" });
        if (done.ok) navigate(imageUrl(name, tag));
        else {
          message.textContent = problem(done, `roll ${tag} back`);
          message.className = "error";
        }
      } }, "Roll back to this")
      : index === 0 && change.digest === current ? el("span", { class: "badge public" }, "current") : null)));
  body.append(el("h2", {}, "Tag history"), el("table", { class: "panel" },
    el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "When"), el("th", { scope: "col" }, "Image"),
      el("th", { scope: "col" }, mayRollBack ? "Rollback" : ""))),
    el("tbody", {}, rows)), message);
}

// ---- routing -------------------------------------------------------------------

function navigate(path) {
  history.pushState(null, "", path);
  route();
}

function route() {
  const path = location.pathname;
  const params = new URLSearchParams(location.search);
  if (path === "/ui/login") return loginView(params);
  if (path === "/ui/namespaces") return namespacesView();
  if (path === "/ui/robots") return robotsView();
  if (path.startsWith("/ui/r/")) return repositoryView(decodeURIComponent(path.slice("/ui/r/".length)), params);
  if (path.startsWith("/ui/i/")) {
    const spec = decodeURIComponent(path.slice("/ui/i/".length));
    const at = spec.indexOf(":");
    if (at > 0) return imageView(spec.slice(0, at), spec.slice(at + 1));
  }
  return repositoriesView(params);
}

document.addEventListener("click", (event) => {
  const anchor = event.target.closest("a[data-link]");
  if (!anchor || event.metaKey || event.ctrlKey || event.shiftKey || event.button !== 0) return;
  event.preventDefault();
  navigate(anchor.getAttribute("href"));
});
window.addEventListener("popstate", route);

await loadSession();
route();
