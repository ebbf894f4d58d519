namespace ReTok.Dashboard;
