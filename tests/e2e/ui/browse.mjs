// Drives Berth's web UI in headless Chromium (run by tests/e2e/ui.sh, which
// starts Berth with alice (admin) and bob (pull and push on app/*) and pushes
// app/web:1, app/web:2 and app/api:1). Each step prints PASS or FAIL; the
// last line is "N passed, M failed". Screenshots go to $SCREENSHOTS.

import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { chromium } from "playwright-core";

// axe-core, evaluated in the page through the browser's debugging protocol
// (which the page's CSP does not govern; a script tag would be refused).
const axeSource = readFileSync(createRequire(import.meta.url).resolve("axe-core/axe.min.js"), "utf8");
const axeViolations = [];
// Checks the page as it is now against WCAG 2.1 A and AA (labels,
// contrast, names of buttons and links, landmarks, ...).
async function axeCheck(label) {
  await page.evaluate(axeSource);
  const result = await page.evaluate(() => window.axe.run(document, {
    runOnly: { type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"] },
  }));
  console.log(`axe ${label}: ${result.passes.length} rules passed, ${result.violations.length} violated`);
  for (const violation of result.violations) {
    axeViolations.push(`${label}: ${violation.id} (${violation.impact}, ${violation.nodes.length} nodes: ${violation.nodes[0].target})`);
  }
}

const base = process.env.BERTH_URL;
const shots = process.env.SCREENSHOTS;
const host = new URL(base).host;
let passed = 0;
let failed = 0;

async function step(name, run) {
  try {
    await run();
    console.log(`PASS ${name}`);
    passed += 1;
  } catch (error) {
    console.log(`FAIL ${name}: ${error.message.split("\n")[0]}`);
    failed += 1;
    // What the page showed when the step failed.
    await page.screenshot({ path: `${shots}/failed-${name}.png`, fullPage: true }).catch(() => {});
  }
}

function expect(condition, message) {
  if (!condition) throw new Error(message);
}

// An anonymous `skopeo inspect`: whether the registry lets it pull.
function anonymousPull(reference) {
  try {
    execFileSync("skopeo", ["--policy", process.env.SKOPEO_POLICY, "inspect", "--tls-verify=false",
      "--no-creds", `docker://${host}/${reference}`], { stdio: "pipe" });
    return true;
  } catch {
    return false;
  }
}

const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", args: ["--no-sandbox"] });
const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin: base });
const page = await context.newPage();
const consoleErrors = [];
// Script errors only: a refused request (401, 403) is logged by the browser
// as a failed resource load, which the steps below cause on purpose.
page.on("console", (message) => {
  if (message.type() === "error" && !message.text().startsWith("Failed to load resource")) {
    consoleErrors.push(message.text());
  }
});
page.on("pageerror", (error) => consoleErrors.push(error.message));
const shot = (name) => page.screenshot({ path: `${shots}/${name}.png`, fullPage: true });
const repoNames = async () => page.locator("ul.repos li a").allTextContents();

async function login(user, password) {
  await page.getByRole("link", { name: "Log in" }).click();
  await page.getByLabel("User name").fill(user);
  await page.getByLabel("Password").fill(password);
  await page.getByRole("button", { name: "Log in" }).click();
}

await step("root-lands-in-the-ui", async () => {
  await page.goto(base + "/");
  expect(new URL(page.url()).pathname === "/ui/", `landed on ${page.url()}`);
  await page.getByRole("heading", { name: "Repositories" }).waitFor();
  await page.getByText("No public repository yet").waitFor();
  await shot("01-anonymous");
  await axeCheck("repositories, anonymous");
});

await step("wrong-password-says-so", async () => {
  await login("alice", "not-her-password");
  await page.getByText("wrong user name or password").waitFor();
  await shot("02-wrong-password");
  await axeCheck("login");
});

await step("login-lists-the-repositories", async () => {
  await page.getByLabel("Password").fill("alice-pw");
  await page.getByRole("button", { name: "Log in" }).click();
  await page.getByText("Signed in as").waitFor();
  await page.locator("ul.repos li").first().waitFor();
  const names = await repoNames();
  expect(JSON.stringify(names) === JSON.stringify(["app/api", "app/web"]), `listed ${names}`);
  await shot("03-repositories");
  await axeCheck("repositories");
});

await step("search-on-the-server", async () => {
  await page.getByLabel("Search repositories").fill("web");
  await page.getByRole("button", { name: "Search" }).click();
  await page.waitForURL(/\?q=web/);
  await page.waitForFunction(() => document.querySelectorAll("ul.repos li").length === 1);
  const names = await repoNames();
  expect(JSON.stringify(names) === JSON.stringify(["app/web"]), `found ${names}`);
});

await step("repository-page-copies-the-pull-command", async () => {
  await page.getByRole("link", { name: "app/web" }).click();
  await page.getByRole("heading", { name: "app/web" }).waitFor();
  await page.getByRole("cell", { name: "2", exact: true }).waitFor();
  const command = `docker pull ${host}/app/web:1`;
  await page.getByRole("button", { name: `Copy ${command}` }).click();
  const copied = await page.evaluate(() => navigator.clipboard.readText());
  expect(copied === command, `copied ${copied}`);
  await shot("04-repository");
  await axeCheck("repository with settings");
});

await step("tags-show-size-platforms-and-age-and-sort-by-date", async () => {
  const body = page.locator("table tbody").first();
  await body.getByText("linux/amd64").first().waitFor();
  const text = await body.textContent();
  expect(/\d+(\.\d)? (B|KiB|MiB)/.test(text), `no size in ${text}`);
  expect(/just now|ago/.test(text), `no age in ${text}`);
  expect(/[0-9a-f]{12}/.test(text), `no digest in ${text}`);
  const shown = await page.locator("main").innerText();
  expect(!/\b(null|undefined)\b/.test(shown), "the page shows null or undefined");
  await page.getByLabel("Sort tags by").selectOption("newest");
  await page.waitForURL(/sort=newest/);
  await page.getByText("2 tags.").waitFor();
  // app/web:1 was pushed again after app/web:2 (tests/e2e/ui.sh).
  const first = await page.locator("table tbody tr").first().locator("a.tag").textContent();
  expect(first === "1", `newest first is ${first}`);
  await page.getByLabel("Filter tags").fill("2");
  await page.getByRole("button", { name: "Filter" }).click();
  await page.getByText("1 tag matching “2”.").waitFor();
  await page.goto(base + "/ui/r/app/web");
  await page.getByText("2 tags.").waitFor();
});

await step("private-repository-refuses-anonymous-pulls", async () => {
  expect(!anonymousPull("app/web:1"), "an anonymous pull of a private repository worked");
});

await step("make-public-then-anonymous-pull-works", async () => {
  await page.getByLabel("Visibility").selectOption("public");
  await page.getByLabel("Description").fill("The web front end");
  await page.getByRole("button", { name: "Save settings" }).click();
  await page.getByText("Saved: in force now.").waitFor();
  await page.getByText("public: anyone may pull", { exact: true }).waitFor();
  expect(anonymousPull("app/web:1"), "the anonymous pull was refused");
  await shot("05-public");
});

await step("private-again-refuses-anonymous-pulls", async () => {
  await page.getByLabel("Visibility").selectOption("private");
  await page.getByRole("button", { name: "Save settings" }).click();
  await page.getByText("Saved: in force now.").waitFor();
  expect(!anonymousPull("app/web:1"), "the anonymous pull still worked");
});

await step("image-page-shows-layers-and-configuration", async () => {
  await page.goto(base + "/ui/r/app/web");
  await page.getByRole("link", { name: "1", exact: true }).click();
  await page.getByRole("heading", { name: "app/web:1" }).waitFor();
  await page.getByRole("heading", { name: /^Layers \(1, / }).waitFor();
  await page.getByText("/hello.txt", { exact: true }).waitFor();
  await page.getByText("linux/amd64", { exact: true }).waitFor();
  await shot("08-image");
  await axeCheck("image");
});

await step("an-index-shows-its-platforms", async () => {
  await page.goto(base + "/ui/i/app/api:1");
  await page.getByRole("heading", { name: "Platforms" }).waitFor();
  await page.getByRole("cell", { name: "linux/amd64" }).waitFor();
  await page.getByRole("cell", { name: "linux/arm64" }).waitFor();
  await page.locator("table a").first().click();
  await page.getByRole("heading", { name: /^Layers \(1, / }).waitFor();
});

await step("rollback-from-the-tag-history", async () => {
  await page.goto(base + "/ui/i/app/web:1");
  await page.getByRole("heading", { name: "Tag history" }).waitFor();
  const rows = page.locator("h2:has-text('Tag history') + table tbody tr");
  expect(await rows.count() === 2, `history of ${await rows.count()} entries`);
  page.once("dialog", (dialog) => dialog.accept());
  await page.getByRole("button", { name: "Roll back to this" }).click();
  await page.waitForFunction(() => document.querySelectorAll("h2 + table tbody tr").length >= 3);
  const digest = execFileSync("skopeo", ["--policy", process.env.SKOPEO_POLICY, "inspect", "--tls-verify=false",
    "--creds", "bob:bob-pw", "--format", "{{.Digest}}", `docker://${host}/app/web:1`]).toString().trim();
  expect(digest === process.env.FIRST_DIGEST, `app/web:1 is ${digest}, not ${process.env.FIRST_DIGEST}`);
  await shot("09-rolled-back");
});

await step("delete-a-tag-after-confirming", async () => {
  await page.goto(base + "/ui/i/app/web:2");
  let asked = "";
  page.once("dialog", (dialog) => {
    asked = dialog.message();
    dialog.accept();
  });
  await page.getByRole("button", { name: "Delete tag 2" }).click();
  await page.getByRole("heading", { name: "Tags" }).waitFor();
  expect(asked === "Delete app/web:2?", `asked ${asked}`);
  await page.getByRole("link", { name: "1", exact: true }).waitFor();
  expect(await page.getByRole("link", { name: "2", exact: true }).count() === 0, "tag 2 is still listed");
});

// Whether a skopeo push of the single-image layout into `reference` with
// `creds` (USER:PASSWORD) works.
function pushAs(creds, reference) {
  try {
    execFileSync("skopeo", ["--policy", process.env.SKOPEO_POLICY, "copy", "-q", "--dest-tls-verify=false",
      "--dest-creds", creds, `oci:${process.env.OCI_LAYOUT}:single`, `docker://${host}/${reference}`],
    { stdio: "pipe" });
    return true;
  } catch {
    return false;
  }
}

// bob may push app/* only.
const pushAsBob = (reference) => pushAs("bob:bob-pw", reference);

await step("an-admin-hands-a-namespace-to-a-user", async () => {
  expect(!pushAsBob("team/tools:1"), "bob pushed into team/ before the namespace");
  await page.getByRole("link", { name: "Namespaces" }).click();
  await page.getByText("No namespace yet.").waitFor();
  const form = page.getByRole("form", { name: "New namespace" });
  await form.getByLabel("Namespace name").fill("team");
  await form.getByLabel("Description").fill("The team's images");
  await form.getByRole("button", { name: "Add a grant" }).click();
  await form.getByLabel("Subject").fill("user:bob");
  await form.getByLabel("push", { exact: true }).check();
  await form.getByRole("button", { name: "Create namespace" }).click();
  await page.getByRole("form", { name: "Namespace team" }).waitFor();
  expect(pushAsBob("team/tools:1"), "bob could not push into team/ after the namespace");
  await shot("10-namespaces");
  await axeCheck("namespaces");
});

await step("create-a-robot-and-push-with-it", async () => {
  await page.getByRole("link", { name: "Robots" }).click();
  await page.getByText("No robot yet.").waitFor();
  const form = page.getByRole("form", { name: "New robot" });
  await form.getByLabel(/^Name \(/).fill("team-ci");
  await form.getByLabel("Namespace").fill("team");
  await form.getByLabel(/^Grants/).fill("team/*:pull,push");
  await form.getByRole("button", { name: "Create robot" }).click();
  const shown = page.getByRole("alert", { name: "New robot secret" });
  await shown.waitFor();
  const secret = (await shown.locator("code.secret").textContent()).trim();
  expect(secret.length >= 40, `a secret of ${secret.length} characters`);
  await shown.getByRole("button", { name: "Copy the secret" }).click();
  const copied = await page.evaluate(() => navigator.clipboard.readText());
  expect(copied === secret, "the copied secret is not the one shown");
  await page.getByRole("row", { name: /robot\$team-ci/ }).waitFor();
  expect(pushAs(`robot$team-ci:${secret}`, "team/robot:1"), "the robot could not push into team/");
  expect(!pushAs(`robot$team-ci:${secret}`, "app/robot:1"), "the robot pushed outside its grants");
  await shot("11-robots");
  await axeCheck("robots");
  // Shown once: a reload lists the robot, never its secret.
  await page.reload();
  await page.getByRole("row", { name: /robot\$team-ci/ }).waitFor();
  expect(!(await page.content()).includes(secret), "the secret is on the page again");
  page.once("dialog", (dialog) => dialog.accept());
  await page.getByRole("button", { name: "Revoke robot$team-ci" }).click();
  await page.getByText("No robot yet.").waitFor();
  expect(!pushAs(`robot$team-ci:${secret}`, "team/robot:2"), "a revoked robot pushed");
});

await step("logout-hides-private-repositories", async () => {
  await page.getByRole("button", { name: "Log out" }).click();
  await page.getByText("No public repository yet").waitFor();
});

await step("a-user-without-manage-sees-no-settings", async () => {
  await login("bob", "bob-pw");
  await page.getByText("Signed in as").waitFor();
  await page.goto(base + "/ui/r/app/web");
  await page.getByText("You may: pull, push.").waitFor();
  expect(await page.getByRole("button", { name: "Save settings" }).count() === 0,
    "bob sees the settings form");
  await page.goto(base + "/ui/i/app/web:1");
  await page.getByRole("heading", { name: "Tag history" }).waitFor();
  expect(await page.getByRole("button", { name: /Delete|Roll back/ }).count() === 0,
    "bob sees delete or rollback buttons");
});

await step("permission-errors-say-what-is-missing", async () => {
  await page.goto(base + "/ui/r/other/secret");
  await page.getByText("You may not see other/secret").waitFor();
  await shot("06-permission-error");
});

// Presses Tab until `predicate` holds for the focused element (at most
// `limit` times): what a keyboard-only user can reach.
async function tabTo(predicate, description, limit = 40) {
  for (let i = 0; i < limit; i += 1) {
    await page.keyboard.press("Tab");
    if (await page.evaluate(predicate)) return;
  }
  throw new Error(`Tab never reached ${description}`);
}

await step("keyboard-only-search-open-and-copy", async () => {
  await page.goto(base + "/ui/");
  await page.locator("ul.repos li").first().waitFor();
  await tabTo(() => document.activeElement?.getAttribute("aria-label") === "Search repositories", "the search box");
  await page.keyboard.type("web");
  await page.keyboard.press("Enter");
  await page.waitForURL(/\?q=web/);
  await page.waitForFunction(() => document.querySelectorAll("ul.repos li").length === 1);
  await tabTo(() => document.activeElement?.textContent === "app/web", "the app/web link");
  await page.keyboard.press("Enter");
  await page.getByRole("heading", { name: "app/web" }).waitFor();
  await page.locator("table tbody tr").first().waitFor();
  await tabTo(() => (document.activeElement?.getAttribute("aria-label") || "").startsWith("Copy docker pull"),
    "a copy button");
  const outline = await page.evaluate(() => getComputedStyle(document.activeElement).outlineStyle);
  expect(outline !== "none", "the focused button shows no focus outline");
  await page.keyboard.press("Enter");
  const copied = await page.evaluate(() => navigator.clipboard.readText());
  expect(copied.startsWith(`docker pull ${host}/app/web:`), `copied ${copied}`);
});

await step("usable-at-a-phones-width", async () => {
  await page.setViewportSize({ width: 375, height: 740 });
  await page.goto(base + "/ui/");
  await page.locator("ul.repos li").first().waitFor();
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth > window.innerWidth);
  expect(!overflow, "the page scrolls sideways on a phone");
  await shot("07-phone");
  // The dark scheme (prefers-color-scheme) keeps its contrast too.
  await page.emulateMedia({ colorScheme: "dark" });
  await axeCheck("repositories, phone, dark");
  await shot("11-phone-dark");
});

// A large registry: 10,000 repositories, 10,000 tags in one of them. The
// pages ask the server for one page at a time; the times are printed (a
// measurement, not a pass condition).
const timed = async (what, run) => {
  const started = Date.now();
  await run();
  console.log(`time ${what}: ${Date.now() - started} ms`);
};

await step("a-large-registry-is-paged-and-searched-on-the-server", async () => {
  execFileSync("python3", [new URL("./populate.py", import.meta.url).pathname, base, "bob", "bob-pw",
    "app/scale", "10000", "10000"], { stdio: "inherit" });
  await page.setViewportSize({ width: 1280, height: 860 });
  await timed("first page of 10,000+ repositories", async () => {
    await page.goto(base + "/ui/");
    await page.getByRole("link", { name: "Next page" }).waitFor();
  });
  expect(await page.locator("ul.repos li").count() === 30, "not a page of 30");
  await timed("search among them", async () => {
    await page.getByLabel("Search repositories").fill("scale-07777");
    await page.getByRole("button", { name: "Search" }).click();
    await page.waitForFunction(() => document.querySelectorAll("ul.repos li").length === 1);
  });
  const names = await repoNames();
  expect(JSON.stringify(names) === JSON.stringify(["app/scale-07777"]), `found ${names}`);
  await timed("a repository of 10,001 tags, first page", async () => {
    await page.goto(base + "/ui/r/app/scale-00000");
    await page.getByRole("link", { name: "t00028", exact: true }).waitFor();
  });
  await timed("its next page", async () => {
    await page.getByRole("link", { name: "Next page" }).click();
    await page.getByRole("link", { name: "t00058", exact: true }).waitFor();
  });
  expect(await page.getByRole("link", { name: "t00000", exact: true }).count() === 0, "the first page again");
  await timed("its tags newest first (every tag's date read)", async () => {
    await page.goto(base + "/ui/r/app/scale-00000?sort=newest");
    await page.getByText("10001 tags.").waitFor();
  });
  expect(await page.locator("table tbody tr").count() === 30, "not a page of 30");
  await timed("a filter among its tags", async () => {
    await page.goto(base + "/ui/r/app/scale-00000?q=t0999");
    await page.getByText("10 tags matching").waitFor();
  });
  await shot("12-large");
});

await step("pages-pass-axe-wcag-2.1-aa", async () => {
  expect(axeViolations.length === 0, axeViolations.join(" | "));
});

await step("no-script-errors", async () => {
  expect(consoleErrors.length === 0, consoleErrors.join(" | "));
});

await browser.close();
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
