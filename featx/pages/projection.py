"""A self-contained interactive map (canvas + a little JavaScript, no network): zoom with the
wheel, pan by dragging, hover a point to see its thumbnail, path and label."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from featx.io.thumbnails import escape, thumbnail_uri
from featx.options import PROJECT

MAX_THUMBNAILS = 3000  # embedded thumbnails (≈2 KB each); other points show path and label only
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7",
           "#dbdb8d", "#9edae5"]

SCRIPT = """
const D=JSON.parse(document.getElementById('data').textContent);
const cv=document.getElementById('map'),ctx=cv.getContext('2d'),tip=document.getElementById('tip');
let W,H,scale=1,ox=0,oy=0,drag=null;
const xs=D.points.map(p=>p[0]),ys=D.points.map(p=>p[1]);
const minx=Math.min(...xs),maxx=Math.max(...xs),miny=Math.min(...ys),maxy=Math.max(...ys);
function resize(){W=cv.width=cv.clientWidth;H=cv.height=cv.clientHeight;draw();}
function sx(x){return ((x-minx)/(maxx-minx||1)*0.9+0.05)*W*scale+ox;}
function sy(y){return (1-((y-miny)/(maxy-miny||1)*0.9+0.05))*H*scale+oy;}
function draw(){ctx.clearRect(0,0,W,H);const r=Math.max(1.5,Math.min(5,3*Math.sqrt(scale)));
 for(const p of D.points){ctx.fillStyle=D.colors[p[2]];ctx.beginPath();ctx.arc(sx(p[0]),sy(p[1]),r,0,6.283);ctx.fill();}}
cv.addEventListener('wheel',e=>{e.preventDefault();const f=e.deltaY<0?1.2:1/1.2;
 ox=e.offsetX-(e.offsetX-ox)*f;oy=e.offsetY-(e.offsetY-oy)*f;scale*=f;draw();});
cv.addEventListener('mousedown',e=>{drag=[e.offsetX-ox,e.offsetY-oy];});
window.addEventListener('mouseup',()=>{drag=null;});
cv.addEventListener('mousemove',e=>{if(drag){ox=e.offsetX-drag[0];oy=e.offsetY-drag[1];draw();tip.style.display='none';return;}
 let best=-1,bd=64;D.points.forEach((p,i)=>{const dx=sx(p[0])-e.offsetX,dy=sy(p[1])-e.offsetY,d=dx*dx+dy*dy;if(d<bd){bd=d;best=i;}});
 if(best<0){tip.style.display='none';return;}const p=D.points[best];
 tip.innerHTML=(p[3]>=0?'<img src="'+D.thumbs[p[3]]+'"><br>':'')+'<b>'+esc(p[5])+'</b><br>'+esc(p[4]);
 tip.style.left=(e.pageX+14)+'px';tip.style.top=(e.pageY+14)+'px';tip.style.display='block';});
cv.addEventListener('dblclick',()=>{scale=1;ox=0;oy=0;draw();});
function esc(s){return String(s).replace(/[&<>"]/g,c=>({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c]));}
window.addEventListener('resize',resize);resize();
"""

STYLE = """
body{font-family:system-ui,sans-serif;margin:0;color:#222}header{padding:8px 14px}
#map{width:100vw;height:calc(100vh - 120px);display:block;cursor:crosshair;border-top:1px solid #ddd}
#tip{position:absolute;display:none;background:#fff;border:1px solid #aaa;padding:6px;font-size:12px;
max-width:260px;word-break:break-all;box-shadow:0 2px 6px #0003;pointer-events:none}
#tip img{width:96px;height:96px;object-fit:contain}.key span{display:inline-block;margin-right:12px;font-size:13px}
.key i{display:inline-block;width:10px;height:10px;border-radius:5px;margin-right:4px}
"""


def render_projection_page(coords: pd.DataFrame, color: str = PROJECT.color, seed: int = PROJECT.seed) -> str:
    groups = coords[color].fillna("(none)").astype(str).to_numpy()
    names = sorted(set(groups))
    index_of = {name: i for i, name in enumerate(names)}
    colors = [PALETTE[i % len(PALETTE)] for i in range(len(names))]
    with_thumb = np.zeros(len(coords), dtype=bool)
    chosen = np.random.default_rng(seed).choice(len(coords), size=min(MAX_THUMBNAILS, len(coords)), replace=False)
    with_thumb[chosen] = True
    thumbs, points = [], []
    for i, row in enumerate(coords.itertuples(index=False)):
        thumb = -1
        if with_thumb[i]:
            thumbs.append(thumbnail_uri(row.path, 96, quality=60))
            thumb = len(thumbs) - 1
        label = "" if pd.isna(row.label) else str(row.label)
        points.append([round(float(row.x), 4), round(float(row.y), 4), index_of[groups[i]], thumb, str(row.path),
                       label])
    data = json.dumps({"points": points, "thumbs": thumbs, "colors": colors}).replace("</", "<\\/")
    info = coords.attrs.get("info", {})
    quality = coords.attrs.get("quality", {})
    title = f"{info.get('method', '').upper()} of {info.get('backbone')} / {info.get('layer')}"
    numbers = ", ".join(f"{k} {v:.3f}" for k, v in quality.items() if isinstance(v, float))
    key = "".join(f'<span><i style="background:{c}"></i>{escape(n)} ({int((groups == n).sum())})</span>'
                  for n, c in zip(names, colors))
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title><style>{STYLE}</style>"
            f"</head><body><header><b>{escape(title)}</b> — {len(coords)} images, coloured by {escape(color)}. "
            f"{escape(numbers)}<br><small>wheel: zoom · drag: pan · double-click: reset · hover: thumbnail</small>"
            f"<div class='key'>{key}</div></header><canvas id='map'></canvas><div id='tip'></div>"
            f"<script type='application/json' id='data'>{data}</script><script>{SCRIPT}</script></body></html>")
