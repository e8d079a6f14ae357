// Injected into a copy of a Snakemake report by tests/test_report.py before Chromium renders it.
// Walks the report as a user does: every category and subcategory, then the "view" (eye) button
// of every result in the menu's table; records what the content pane shows after each click.
(function () {
  const sleep = ms => new Promise(resolve => setTimeout(resolve, ms));
  async function waitFor(test) {
    for (let i = 0; i < 100; i++) { const value = test(); if (value) return value; await sleep(50); }
    return null;
  }
  function rows() { return Array.from(document.querySelectorAll("nav table tbody tr")); }
  async function run() {
    const shown = [];
    await waitFor(() => typeof app !== "undefined" && document.querySelector("nav"));
    for (const category of Object.keys(categories)) {
      for (const subcategory of Object.keys(categories[category])) {
        const paths = categories[category][subcategory];
        // back to the main menu first, as a user does: the results table keeps its rows when it
        // is handed another subcategory directly
        app.setView({navbarMode: "menu"});
        await waitFor(() => rows().length === 0);
        app.setView({navbarMode: "subcategory", category: category, subcategory: subcategory});
        // the menu shows this subcategory once its table lists exactly its results
        await waitFor(() => rows().length === paths.length);
        for (let i = 0; i < rows().length; i++) {
          const before = app.state.resultPath;
          const button = rows()[i].querySelector("[role=group] a");
          const entry = {category, subcategory, row: i};
          if (button.getAttribute("download")) {  // a table: the button downloads it
            entry.download = button.getAttribute("download");
            shown.push(entry);
            continue;
          }
          button.click();
          // every result is selected once, so a click that shows something changes resultPath
          await waitFor(() => app.state.resultPath !== before);
          entry.path = app.state.resultPath;
          entry.listed = paths.includes(entry.path);
          entry.content = app.state.content;
          if (entry.content === "img") {
            const img = await waitFor(() => {
              const el = document.querySelector("#app img[src^='data:image/png']");
              return el && el.complete && el.naturalWidth > 0 ? el : null;
            });
            entry.width = img ? img.naturalWidth : 0;
            entry.same = Boolean(img) && img.getAttribute("src") === results[entry.path].data_uri;
            entry.height = img ? img.naturalHeight : 0;
          } else if (entry.content === "html") {
            entry.iframe = Boolean(await waitFor(() => document.querySelector("#app iframe[src^='data:text/html']")));
          }
          shown.push(entry);
        }
      }
    }
    const out = document.createElement("pre");
    out.id = "zooscope-report-check";
    out.textContent = JSON.stringify(shown);
    document.body.appendChild(out);
  }
  window.addEventListener("load", () => { run(); });
})();
